# frozen_string_literal: true

module Tasker
  # An open handle on a Tasker database: the engine's operations (docs/api.md) as Ruby
  # methods. Open one with Tasker.open; pass a block to have it closed for you.
  #
  # A client is thread-safe and survives +fork+: a forked child's first call opens the
  # database again for the child (Puma, Unicorn and preforking job runners work), and
  # the parent is unaffected. Every engine call releases the GVL.
  #
  # Each method runs the engine operation of the same name and returns its response as
  # plain Ruby data (Hashes with String keys, as JSON.parse gives them); a failure
  # raises the Tasker::Error subclass of its code. Hashes you pass may use String or
  # Symbol keys.
  class Client
    # Marks "argument not given" where nil is a meaningful value (a null result).
    UNSET = Object.new.freeze
    private_constant :UNSET

    # Opens a handle. +config+ is a database URL ("sqlite://app.db",
    # "postgres://..."), a Hash of settings (docs/configuration.md), or nil for the
    # defaults (tasker.yaml and TASKER_* variables still apply); +settings+ are laid
    # over it: Tasker::Client.open("sqlite://app.db", lease_ms: 60_000).
    #
    # Raises Tasker::InvalidArgumentError (a bad setting) or Tasker::UnavailableError
    # (the database cannot be opened).
    def self.open(config = nil, **settings)
      merged = {}
      case config
      when String then merged["database_url"] = config
      when Hash then config.each { |k, v| merged[k.to_s] = v }
      when nil then nil
      else
        raise TypeError, "config must be a database URL String or a Hash of settings, got #{config.class}"
      end
      settings.each { |k, v| merged[k.to_s] = v }
      text = merged.empty? ? "" : Native.to_json(merged, "config")
      new(Native::Handle.open(text))
    end

    # Wraps a native handle; use Tasker.open instead.
    def initialize(handle)
      raise TypeError, "use Tasker.open(...) to open a client" unless handle.is_a?(Native::Handle)

      @h = handle
      @subs = []
      @lock = Mutex.new
    end

    # The native handle (used by Tasker::Worker).
    def native
      @h
    end

    # Closes the handle and stops its event subscriptions. Idempotent; any later call
    # raises Tasker::ClosedError.
    def close
      subs = @lock.synchronize { @subs.dup.tap { @subs.clear } }
      subs.each(&:stop)
      @h.close
      nil
    end

    # True once #close was called.
    def closed?
      @h.closed?
    end

    def inspect
      "#<Tasker::Client #{closed? ? 'closed' : 'open'}>"
    end

    # -- raw access ----------------------------------------------------------------

    # Runs any operation by name with a request Hash; returns the response as Ruby
    # data. The escape hatch under every other method. A request that waits
    # (+wait_ms+ or +grace_ms+ above 0) can be interrupted (Thread#raise, Ctrl-C).
    def call(op, request = nil)
      Types.string!("op", op)
      Types.hash!("request", request, allow_nil: true)
      if waits?(request)
        loop do
          out = @h.call_obj_wait(op, request, nil)
          return out unless out.nil?
        end
      end
      @h.call_obj(op, request)
    end

    # Runs an operation with a JSON request text and returns the JSON response text,
    # unchanged.
    def call_json(op, request = "")
      @h.call(op, request)
    end

    # -- operations ----------------------------------------------------------------

    # Checks that the handle works: {"ok" => true, "version" => ...}.
    def ping
      @h.call_obj("ping", nil)
    end

    # Validates a template and stores it in the registry.
    #
    # +source+ is a Hash (the template document) or a file path (a String or a
    # Pathname, relative to the working directory); nothing is guessed from a String's
    # content. YAML or JSON *text* is given as +yaml:+. Or name the kind with exactly
    # one of +path:+, +yaml:+, +template:+.
    #
    # Registering the identical template again changes nothing and says so
    # ("registered" false, "unchanged" true); a different template under the same key
    # raises Tasker::ConflictError naming what differs, unless +replace: true+. Raises Tasker::InvalidTemplateError (details["problem"])
    # or Tasker::NotFoundError (no such file).
    def register_template(source = nil, path: nil, yaml: nil, template: nil, replace: false)
      req = template_source(source, path, yaml, template)
      Types.bool!("replace", replace)
      req["replace"] = true if replace
      @h.call_obj("register_template", req)
    end

    # Validates a template without storing it; returns it resolved
    # ({"valid" => true, "template" => {...}}). Sources as for #register_template.
    def validate_template(source = nil, path: nil, yaml: nil, template: nil)
      @h.call_obj("validate_template", template_source(source, path, yaml, template))
    end

    # The stored (resolved) template; the highest version when +version+ is nil.
    # Raises Tasker::NotFoundError.
    def get_template(namespace, name, version = nil)
      Types.string!("namespace", namespace)
      Types.string!("name", name)
      Types.string!("version", version, allow_nil: true)
      req = { "namespace" => namespace, "name" => name }
      req["version"] = version unless version.nil?
      @h.call_obj("get_template", req)["template"]
    end

    # Creates a task (one run of a template) with all its steps. Returns
    # {"task_id", "created", "state"}.
    #
    # +version+ nil takes the highest registered version. +context+ is the task's input
    # (any JSON data; default {}), handed to every handler and checked against the
    # template's input_schema. With an +idempotency_key+ already used for this
    # template's namespace and name, the existing task is returned ("created" false).
    # +priority+ is added to every step's priority.
    #
    # Raises Tasker::NotFoundError (no such template), Tasker::SchemaViolationError,
    # Tasker::TooLargeError.
    #
    # Scheduling (docs/scheduling.md): +run_at+ (an RFC 3339 String or a Time) or
    # +delay_ms+ delays the task; +timeout_s+ fails it when it has not finished that many
    # seconds after it is due (running handlers see step.cancelled?, reason task_timeout).
    def create_task(namespace, name, version = nil, context: UNSET, idempotency_key: nil, priority: nil,
                    run_at: nil, delay_ms: nil, timeout_s: nil)
      Types.string!("namespace", namespace)
      Types.string!("name", name)
      Types.string!("version", version, allow_nil: true)
      Types.string!("idempotency_key", idempotency_key, allow_nil: true)
      Types.integer!("priority", priority, allow_nil: true)
      req = { "namespace" => namespace, "name" => name }
      req["version"] = version unless version.nil?
      req["context"] = context unless UNSET.equal?(context)
      req["idempotency_key"] = idempotency_key unless idempotency_key.nil?
      req["priority"] = priority unless priority.nil?
      req.merge!(timing("", run_at, delay_ms, timeout_s))
      @h.call_obj("create_task", req)
    end

    # Creates many tasks in one transaction: every one of them, or none. +tasks+ is an
    # Array of Hashes with create_task's arguments as keys (Symbols or Strings):
    # namespace, name, and as needed version, context, idempotency_key, priority. Each is
    # checked and created as create_task would, in order: a key that made a task before,
    # or that an earlier item of the batch has, returns that task ("created" false).
    # Returns one {"task_id", "created", "state"} per task, in order.
    #
    # Raises create_task's errors for the first item that has one (the message starts
    # with tasks[i], details["index"] is i); nothing of the batch is stored then.
    def create_tasks(tasks)
      raise TypeError, "tasks must be an Array, got #{Types.describe(tasks)}" unless tasks.is_a?(Array)

      items = tasks.each_with_index.map do |task, i|
        at = "tasks[#{i}]"
        Types.hash!(at, task)
        task = task.transform_keys(&:to_s)
        unknown = task.keys - CREATE_FIELDS
        raise ArgumentError, "#{at} has unknown keys #{unknown.join(", ")} (known: #{CREATE_FIELDS.join(", ")})" unless unknown.empty?

        Types.string!("#{at}.namespace", task["namespace"])
        Types.string!("#{at}.name", task["name"])
        Types.string!("#{at}.version", task["version"], allow_nil: true)
        Types.string!("#{at}.idempotency_key", task["idempotency_key"], allow_nil: true)
        Types.integer!("#{at}.priority", task["priority"], allow_nil: true)
        task.merge(timing("#{at}.", task["run_at"], task["delay_ms"], task["timeout_s"])).compact
      end
      @h.call_obj("create_tasks", { "tasks" => items })["tasks"]
    end

    # The keys of one create_tasks item.
    CREATE_FIELDS = %w[namespace name version context idempotency_key priority run_at delay_ms timeout_s].freeze

    # -- Schedules (docs/scheduling.md) --

    # Creates a cron schedule: at each tick of +cron+ in +timezone+ (IANA) a task of the
    # template +namespace+/+template+ is created with +context+, exactly one per tick
    # whatever the number of processes. +catch_up+ is "skip" (only the latest missed
    # tick fires after downtime) or "all" (each, at most +catch_up_limit+, default 100).
    # Raises InvalidArgumentError (cron, time zone, policy), NotFoundError (template),
    # ConflictError (the name is taken).
    def create_schedule(name, namespace, template, cron:, timezone: "UTC", version: nil, context: UNSET,
                        catch_up: "skip", catch_up_limit: nil, paused: false)
      Types.string!("name", name)
      Types.string!("namespace", namespace)
      Types.string!("template", template)
      Types.string!("cron", cron)
      Types.string!("timezone", timezone)
      Types.string!("version", version, allow_nil: true)
      Types.string!("catch_up", catch_up.to_s)
      Types.integer!("catch_up_limit", catch_up_limit, allow_nil: true)
      req = {
        "name" => name,
        "template" => compact(namespace: namespace, name: template, version: version),
        "cron" => cron,
        "timezone" => timezone,
        "catch_up" => compact(policy: catch_up.to_s, limit: catch_up_limit),
        "paused" => paused ? true : false
      }
      req["context"] = context unless UNSET.equal?(context)
      @h.call_obj("create_schedule", req)["schedule"]
    end

    # Every schedule, by name.
    def list_schedules
      @h.call_obj("list_schedules", {})["schedules"]
    end

    # One schedule. Raises Tasker::NotFoundError.
    def get_schedule(name)
      Types.string!("name", name)
      @h.call_obj("get_schedule", { "name" => name })["schedule"]
    end

    # Stops a schedule from firing.
    def pause_schedule(name)
      Types.string!("name", name)
      @h.call_obj("pause_schedule", { "name" => name })["schedule"]
    end

    # Lets a paused schedule fire again, from its next tick after now.
    def resume_schedule(name)
      Types.string!("name", name)
      @h.call_obj("resume_schedule", { "name" => name })["schedule"]
    end

    # Deletes a schedule (the tasks it created stay).
    def delete_schedule(name)
      Types.string!("name", name)
      @h.call_obj("delete_schedule", { "name" => name })
      nil
    end

    # A task with its context and every step (state, attempts, result, latest error
    # document). Raises Tasker::NotFoundError.
    def get_task(task_id)
      Types.integer!("task_id", task_id)
      @h.call_obj("get_task", { "task_id" => task_id })["task"]
    end

    # A page of tasks, newest first, optionally filtered: {"tasks", "next_cursor"}.
    # Pass the returned "next_cursor" as +cursor:+ for the next page.
    def list_tasks(state: nil, namespace: nil, name: nil, limit: nil, cursor: nil)
      Types.string!("state", state, allow_nil: true)
      Types.string!("namespace", namespace, allow_nil: true)
      Types.string!("name", name, allow_nil: true)
      Types.integer!("limit", limit, allow_nil: true)
      Types.integer!("cursor", cursor, allow_nil: true)
      @h.call_obj("list_tasks", compact(state: state, namespace: namespace, name: name, limit: limit, cursor: cursor))
    end

    # Says, for people, why each unfinished step of a task is not done yet.
    def explain_task(task_id)
      Types.integer!("task_id", task_id)
      @h.call_obj("explain_task", { "task_id" => task_id })
    end

    # Cancels a task: every unfinished step becomes "cancelled". Returns
    # {"task_id", "state", "changed"}. Raises Tasker::InvalidStateError (the task is
    # complete) or Tasker::NotFoundError.
    def cancel_task(task_id, reason: nil)
      Types.integer!("task_id", task_id)
      Types.string!("reason", reason, allow_nil: true)
      @h.call_obj("cancel_task", compact(task_id: task_id, reason: reason))
    end

    # Puts a step in "error" back to "ready" with a fresh attempt budget. Name it by
    # +step_id+, or by +task_id:+ and +step_name:+. Raises Tasker::InvalidStateError.
    def retry_step(step_id = nil, task_id: nil, step_name: nil)
      @h.call_obj("retry_step", step_ref(step_id, task_id, step_name))
    end

    # Marks an unfinished step done by hand ("resolved_manually"), optionally with a
    # +result:+ its children receive. Name it as for #retry_step. Raises
    # Tasker::InvalidStateError (the step already finished).
    def resolve_step(step_id = nil, task_id: nil, step_name: nil, result: UNSET, reason: nil)
      req = step_ref(step_id, task_id, step_name)
      Types.string!("reason", reason, allow_nil: true)
      req["reason"] = reason unless reason.nil?
      req["result"] = result unless UNSET.equal?(result)
      @h.call_obj("resolve_step", req)
    end

    # Sends signal +name+ to a task: every step of it that waits for the signal
    # (+wait_for+ in the template) and is "waiting" completes with +payload:+ (default
    # nil) as its result; a step not waiting yet takes the signal when it gets there.
    # Returns {"task_id", "signal", "steps" => [{"step_id", "step_name", "state"}],
    # "task_state"}. Raises Tasker::NotFoundError (no such task, or nothing waits for
    # +name+), Tasker::InvalidStateError (the task is complete or cancelled),
    # Tasker::ConflictError (the signal was already sent).
    def send_signal(task_id, name, payload: nil)
      Types.integer!("task_id", task_id)
      Types.string!("name", name)
      @h.call_obj("send_signal", { "task_id" => task_id, "name" => name, "payload" => payload })
    end

    # Counts by state, throughput in the window, the slowest steps and tasks, and
    # "last_event_id". Reads whole tables: for dashboards, not per task.
    def stats(window_ms: nil)
      Types.integer!("window_ms", window_ms, allow_nil: true)
      @h.call_obj("stats", compact(window_ms: window_ms))
    end

    # Events after cursor +since+, oldest first: {"events", "next_cursor"}. With
    # +wait_ms:+, waits that long for new events when there are none (the wait can be
    # interrupted). Raises Tasker::InvalidArgumentError (an unknown event name).
    def events(since = 0, limit: nil, wait_ms: nil, task_id: nil, types: nil)
      Types.integer!("since", since)
      Types.integer!("limit", limit, allow_nil: true)
      Types.integer!("wait_ms", wait_ms, allow_nil: true)
      Types.integer!("task_id", task_id, allow_nil: true)
      Types.string_array!("types", types, allow_nil: true)
      call("events", compact(since: since, limit: limit, wait_ms: wait_ms, task_id: task_id, types: types))
    end

    # Calls the block with every new event named +event+ ("task.completed",
    # "step.failed", ...; "*" for all), on a thread of its own, in order.
    #
    #   sub = tasker.on("step.failed") { |event| warn event["step_name"] }
    #   sub.stop
    #
    # Events come from the durable log, so events committed by other processes are
    # delivered too. +since:+ is the cursor to start after; nil starts from now. A block
    # that raises is logged (Tasker.logger) and delivery goes on. Returns a
    # Tasker::Subscription; #close stops every subscription. Raises
    # Tasker::InvalidArgumentError when +event+ is not an event name.
    def on(event, since: nil, &block)
      raise ArgumentError, "on(event) needs a block" unless block

      Types.string!("event", event)
      Types.integer!("since", since, allow_nil: true)
      types = event == "*" ? nil : [event]
      since = stats["last_event_id"] if since.nil?
      # Checks the name now rather than on the delivery thread.
      @h.call_obj("events", compact(since: since, limit: 1, types: types)) unless types.nil?
      sub = Subscription.new(self, event, since, types, block)
      @lock.synchronize do
        @subs.reject!(&:stopped?)
        @subs << sub
      end
      sub
    end

    # -- the worker protocol (for custom workers and the conformance runner) ------------

    # Claims up to +limit+ ready steps of these handlers ({"steps" => [...]}, each with
    # its "claim_token", context, config and parent results).
    def claim(handlers, limit: nil, wait_ms: nil, worker_id: nil, lease_ms: nil)
      Types.string_array!("handlers", handlers)
      call("claim", compact(handlers: handlers, limit: limit, wait_ms: wait_ms, worker_id: worker_id,
                            lease_ms: lease_ms))
    end

    # Renews a claimed step's lease. Raises Tasker::LeaseLostError when the claim no
    # longer holds the step.
    def heartbeat(step_id, claim_token, lease_ms: nil)
      @h.call_obj("heartbeat", compact(step_id: step_id, claim_token: claim_token, lease_ms: lease_ms))
    end

    # Records a claimed step's result. Raises Tasker::LeaseLostError when the claim no
    # longer holds the step (nothing is recorded).
    def complete_step(step_id, claim_token, result = nil)
      @h.call_obj("complete_step", { "step_id" => step_id, "claim_token" => claim_token, "result" => result })
    end

    # Records many results in one transaction ({step_id, claim_token, result} each);
    # with +claim:+ the same transaction claims the next steps.
    def complete_steps(items, claim: nil)
      req = { "items" => items }
      req["claim"] = claim unless claim.nil?
      @h.call_obj("complete_steps", req)
    end

    # Reports a failed attempt with an error document ("message" required; "kind",
    # "retryable", "retry_after_ms" and anything else are kept).
    def fail_step(step_id, claim_token, error)
      @h.call_obj("fail_step", { "step_id" => step_id, "claim_token" => claim_token, "error" => error })
    end

    # Hands a claimed step back unrun; its attempt does not count.
    def release_step(step_id, claim_token, delay_ms: nil, reason: nil)
      @h.call_obj("release_step", compact(step_id: step_id, claim_token: claim_token, delay_ms: delay_ms,
                                          reason: reason))
    end

    # Takes back expired leases now ({"expired" => n}).
    def sweep
      @h.call_obj("sweep", nil)
    end

    # Applies pending database migrations ({"applied" => n}).
    def migrate
      @h.call_obj("migrate", nil)
    end

    # The worker session operations (docs/workers.md); Tasker::Worker drives them.
    def worker_open(handlers:, concurrency: nil, batch: nil, lease_ms: nil, name: nil)
      @h.call_obj("worker_open", compact(handlers: handlers, concurrency: concurrency, batch: batch,
                                         lease_ms: lease_ms, name: name))
    end

    # Up to +max+ claimed steps of a session, waiting up to +wait_ms+ (interruptible):
    # {"steps", "stop", "idle"}.
    def worker_next(worker_id, max: nil, wait_ms: nil)
      call("worker_next", compact(worker_id: worker_id, max: max, wait_ms: wait_ms))
    end

    # Records a session's outcomes ({step_id, result} | {step_id, error} |
    # {step_id, invalid_result} | {step_id, release: true}); with +claim_next:+ (the
    # request's "next": {max:, wait_ms:}) claims the next batch in the same round trip.
    def worker_report(worker_id, outcomes, claim_next: nil)
      req = { "worker_id" => worker_id, "outcomes" => outcomes }
      req["next"] = claim_next unless claim_next.nil?
      call("worker_report", req)
    end

    # Counts of an open worker session.
    def worker_stats(worker_id)
      @h.call_obj("worker_stats", { "worker_id" => worker_id })
    end

    # Closes a worker session, waiting up to +grace_ms+ for the reports of held steps.
    def worker_close(worker_id, grace_ms: nil)
      call("worker_close", compact(worker_id: worker_id, grace_ms: grace_ms))
    end

    private

    def waits?(request)
      return false unless request.is_a?(Hash)

      %w[wait_ms grace_ms].any? do |k|
        v = request.key?(k) ? request[k] : request[k.to_sym]
        v.is_a?(Integer) && v.positive?
      end
    end

    # The delay and timeout fields of a creation (+run_at+ may be a Time).
    def timing(at, run_at, delay_ms, timeout_s)
      run_at = run_at.utc.strftime("%Y-%m-%dT%H:%M:%S.%LZ") if run_at.is_a?(Time)
      Types.string!("#{at}run_at", run_at, allow_nil: true)
      Types.integer!("#{at}delay_ms", delay_ms, allow_nil: true)
      Types.integer!("#{at}timeout_s", timeout_s, allow_nil: true)
      compact(run_at: run_at, delay_ms: delay_ms, timeout_s: timeout_s)
    end

    def compact(**fields)
      fields.each_with_object({}) { |(k, v), h| h[k.to_s] = v unless v.nil? }
    end

    def step_ref(step_id, task_id, step_name)
      Types.integer!("step_id", step_id, allow_nil: true)
      Types.integer!("task_id", task_id, allow_nil: true)
      Types.string!("step_name", step_name, allow_nil: true)
      if step_id.nil? && (task_id.nil? || step_name.nil?)
        raise ArgumentError, "name the step by step_id, or by task_id: and step_name:"
      end

      compact(step_id: step_id, task_id: task_id, step_name: step_name)
    end

    def template_source(source, path, yaml, template)
      given = [source, path, yaml, template].compact
      unless given.size == 1
        raise ArgumentError, "give exactly one template source: source, path:, yaml: or template:"
      end

      case source
      when nil then nil
      when Hash then template = source
      when Pathname then path = source.to_s
      when String
        # A positional String is a file path, never guessed from its content; no path
        # holds a line break.
        if source.include?("\n")
          raise TypeError, "a positional template source is a file path; give YAML or JSON text as yaml: ..."
        end

        path = source
      else
        raise TypeError, "a template source is a Hash, a path or YAML text, not #{source.class}"
      end
      return { "template" => Types.hash!("template", template) } unless template.nil?
      return { "yaml" => Types.string!("yaml", yaml) } unless yaml.nil?

      path = path.to_s if path.is_a?(Pathname)
      { "path" => Types.string!("path", path) }
    end
  end
end
