# frozen_string_literal: true

module Tasker
  # Argument checks shared by the client and the worker: a wrong type is a TypeError
  # naming the argument, before anything reaches the engine (which checks values).
  module Types
    module_function

    def string!(name, value, allow_nil: false)
      return value if value.is_a?(String) || (allow_nil && value.nil?)

      raise TypeError, "#{name} must be a String, got #{describe(value)}"
    end

    def integer!(name, value, allow_nil: false)
      return value if value.is_a?(Integer) || (allow_nil && value.nil?)

      raise TypeError, "#{name} must be an Integer, got #{describe(value)}"
    end

    def bool!(name, value)
      return value if [true, false].include?(value)

      raise TypeError, "#{name} must be true or false, got #{describe(value)}"
    end

    def hash!(name, value, allow_nil: false)
      return value if value.is_a?(Hash) || (allow_nil && value.nil?)

      raise TypeError, "#{name} must be a Hash, got #{describe(value)}"
    end

    def string_array!(name, value, allow_nil: false)
      return value if allow_nil && value.nil?
      raise TypeError, "#{name} must be an Array of Strings, got #{describe(value)}" unless value.is_a?(Array)

      value.each_with_index do |v, i|
        raise TypeError, "#{name}[#{i}] must be a String, got #{describe(v)}" unless v.is_a?(String)
      end
      value
    end

    def positive_integer!(name, value, allow_nil: false)
      integer!(name, value, allow_nil: allow_nil)
      raise ArgumentError, "#{name} must be at least 1, got #{value}" if !value.nil? && value < 1

      value
    end

    def describe(value)
      value.nil? ? "nil" : value.class.to_s
    end
  end

  # A claimed step, handed to a handler.
  #
  #   worker.handle("charge") do |step|
  #     step.context["order_id"]    # the task's input
  #     step.results["validate"]    # a parent's result, by step name
  #     step.config                 # the step's config from the template (or nil)
  #     step.attempt                # 1 on the first attempt
  #     step.cancelled?             # true once the run should stop
  #   end
  #
  # Context, config and results are parsed when first read (Hashes with String keys).
  class Step
    # The step's id, the id of its task, its name in the template, the handler name it
    # was claimed for.
    attr_reader :step_id, :task_id, :step_name, :handler
    # 1 on the first attempt (counted since the last operator retry); the retry budget.
    attr_reader :attempt, :max_attempts
    # The step's timeout in milliseconds (nil: none); when the lease runs out unless
    # core renews it (RFC 3339).
    attr_reader :timeout_ms, :lease_expires_at
    # Why the run should stop ("cancelled", "timeout", "lease_lost", "task_timeout"), or nil.
    attr_reader :stop_reason

    # A step from the native worker's flat form.
    def self.from_wire(row)
      new(*row)
    end

    # A step from a Hash with the fields of a claimed step (String or Symbol keys;
    # "context", "config" and "results" as Ruby data), as the low-level +claim+ returns
    # it. Handy to call a handler in a unit test:
    #
    #   step = Tasker::Step.from_h(step_id: 1, task_id: 1, step_name: "charge",
    #                              handler: "charge", context: { "order_id" => 42 })
    #   ChargeCard.call(step)
    def self.from_h(hash)
      h = hash.transform_keys(&:to_s)
      step = new(h["step_id"], h["task_id"], h["step_name"], h["handler"] || h["step_name"], h.fetch("attempt", 1),
                 h.fetch("max_attempts", 1), h["timeout_ms"], h["lease_expires_at"])
      step.instance_variable_set(:@context, h["context"])
      step.instance_variable_set(:@config, h["config"])
      step.instance_variable_set(:@results, h.fetch("results", {}) || {})
      step
    end

    def initialize(step_id, task_id, step_name, handler, attempt, max_attempts, timeout_ms,
                   lease_expires_at, context_json = nil, config_json = nil, results_json = nil,
                   claim_token = nil)
      @step_id = step_id
      @task_id = task_id
      @step_name = step_name
      @handler = handler
      @attempt = attempt
      @max_attempts = max_attempts
      @timeout_ms = timeout_ms
      @lease_expires_at = lease_expires_at
      @context_json = context_json
      @config_json = config_json
      @results_json = results_json
      @claim_token = claim_token
      @client = nil
      @stop_reason = nil
    end

    # Starts a child task of this step (create_task with parent): +key+ names it among
    # the step's children, so a retried handler that starts it again gets the same task
    # back. Returns the child task's id. Return Tasker.wait_for_children from the
    # handler to have the step wait for its children.
    def start_child(namespace:, name:, key:, context: nil, version: nil, priority: nil)
      raise ArgumentError, "start_child needs a step a Tasker::Worker handed to its handler" if @client.nil?

      req = { "namespace" => namespace, "name" => name, "idempotency_key" => key,
              "parent" => { "step_id" => step_id, "claim_token" => @claim_token } }
      req["context"] = context unless context.nil?
      req["version"] = version unless version.nil?
      req["priority"] = priority unless priority.nil?
      @client.call("create_task", req)["task_id"]
    end

    # Called by the worker: the client the step was claimed with (for #start_child).
    def bind_client(client)
      @client = client
    end

    # The task's context (its input), as given to create_task.
    def context
      return @context if defined?(@context)

      @context = @context_json.nil? ? nil : Native.from_json(@context_json)
    end

    # The step's config from the template (nil when it has none).
    def config
      return @config if defined?(@config)

      @config = @config_json.nil? ? nil : Native.from_json(@config_json)
    end

    # The results of the step's parents, by step name.
    def results
      return @results if defined?(@results)

      @results = @results_json.nil? ? {} : Native.from_json(@results_json)
    end

    # True once the step's run should stop: its task was cancelled, its timeout passed,
    # or its lease was lost. Whatever the handler returns afterwards is not recorded.
    def cancelled?
      !@stop_reason.nil?
    end

    # Called by the worker when core names this step in a stop signal.
    def stop!(reason)
      @stop_reason ||= reason
    end

    def to_h
      {
        "step_id" => step_id, "task_id" => task_id, "step_name" => step_name, "handler" => handler,
        "attempt" => attempt, "max_attempts" => max_attempts, "timeout_ms" => timeout_ms,
        "lease_expires_at" => lease_expires_at, "context" => context, "config" => config,
        "results" => results
      }
    end

    def inspect
      "#<Tasker::Step task_id=#{task_id} step_name=#{step_name.inspect} step_id=#{step_id} attempt=#{attempt}>"
    end
  end

  # What a worker session did: steps completed, failed attempts reported, reports
  # refused because the step was no longer held (lost), steps handed back unrun.
  WorkerStats = Struct.new(:completed, :failed, :lost, :released, keyword_init: true) do
    def self.from_h(h)
      new(completed: h.fetch("completed", 0), failed: h.fetch("failed", 0), lost: h.fetch("lost", 0),
          released: h.fetch("released", 0))
    end
  end

  # A running event subscription (from Tasker::Client#on). Its events are delivered
  # by a thread of its own, reading the durable log with the GVL released.
  class Subscription
    # The event name subscribed to ("*" for all).
    attr_reader :event

    def initialize(client, event, since, types, block)
      @client = client
      @event = event
      @types = types
      @block = block
      @cancel = Native::Cancel.new
      @pid = Process.pid
      @stopped = false
      @lock = Mutex.new
      @wake = ConditionVariable.new
      @thread = Thread.new(since) { |cursor| deliver(cursor) }
      @thread.name = "tasker-events #{event}"
      @thread.report_on_exception = true
    end

    # Stops delivery (idempotent) and waits for the delivery thread to end; called from
    # inside the block, it stops without waiting.
    def stop
      @lock.synchronize do
        @stopped = true
        @wake.broadcast
      end
      @cancel.cancel
      # A forked child inherits this object but not the thread.
      return nil unless @pid == Process.pid

      @thread.join unless Thread.current == @thread
      nil
    end

    # True while events are being delivered (never in a forked child).
    def active?
      @pid == Process.pid && !@stopped && @thread.alive?
    end

    # True once #stop was called (or the client was closed).
    def stopped?
      @stopped || @pid != Process.pid
    end

    private

    def deliver(cursor)
      h = @client.native
      wait_ms = h.poll_ms
      until @stopped
        page = begin
          req = { "since" => cursor, "limit" => 1000, "wait_ms" => wait_ms }
          req["types"] = @types unless @types.nil?
          h.call_obj_wait("events", req, @cancel)
        rescue ClosedError
          break
        rescue Error => e
          Tasker.logger.warn("tasker: event subscription #{@event.inspect} read failed (#{e.message}); retrying")
          @lock.synchronize { @wake.wait(@lock, wait_ms / 1000.0) unless @stopped }
          next
        end
        next if page.nil? # the wait was cut short: look at @stopped again

        page["events"].each do |ev|
          break if @stopped

          begin
            @block.call(ev)
          rescue StandardError => e
            Tasker.logger.error("tasker: event callback for #{@event.inspect} failed on #{ev['event']}: " \
                                "#{e.class}: #{e.message}")
          end
        end
        cursor = page["next_cursor"]
      end
    end
  end
end
