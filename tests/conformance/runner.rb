# frozen_string_literal: true

# The Ruby conformance runner: every vector of this directory (format in README.md) run
# through the installed `tasker` gem, on SQLite and on PostgreSQL. Claims come back from
# Tasker::Client#claim (or, for "via": "worker_session" vectors, from the worker
# session's native worker_next, as Tasker::Worker gets them) and are handed as
# Tasker::Step objects to a Ruby handler, which
# computes each scripted outcome from the step's context, results, config and attempt;
# every call goes through Tasker::Client, and expected errors are matched on the
# exception class and its code, message and details. Same semantics as
# core/tests/conformance.rs and bindings-python/tests/test_conformance.py.
#
# Run by scripts/ruby-tests; by itself (with the gem installed):
#   ruby tests/conformance/runner.rb [-n /diamond/]
# Env: TASKER_CONFORMANCE_DIR (default: this directory), TASKER_TEST_DATABASE_URL.

require_relative "../../bindings-ruby/test/test_helper"

module Conformance
  VECTORS_DIR = ENV.fetch("TASKER_CONFORMANCE_DIR", __dir__)
  VECTORS = Dir.glob(File.join(VECTORS_DIR, "*.json")).sort
  MIN_VECTORS = 20
  MAX_LOOPS = 2000
  ABSENT = Object.new.freeze

  # The gem did not behave as the vector says (reported with `flunk`, so minitest
  # counts it as a failure).
  class VectorFailure < StandardError; end

  module_function

  def fail!(msg)
    raise VectorFailure, msg
  end

  # JSON equality, numbers by value; a boolean is never a number.
  def json_eq(a, b)
    return a == b if [true, false].include?(a) || [true, false].include?(b)
    return a == b if a.is_a?(Numeric) && b.is_a?(Numeric)
    if a.is_a?(Array) && b.is_a?(Array)
      return a.size == b.size && a.zip(b).all? { |x, y| json_eq(x, y) }
    end
    if a.is_a?(Hash) && b.is_a?(Hash)
      return a.keys.sort == b.keys.sort && a.all? { |k, v| json_eq(v, b[k]) }
    end

    a.instance_of?(b.class) && a == b
  end

  # +expected+ is a subset of +actual+: objects key by key, recursively.
  def json_subset(expected, actual)
    if expected.is_a?(Hash) && actual.is_a?(Hash)
      return expected.all? { |k, v| actual.key?(k) && json_subset(v, actual[k]) }
    end

    json_eq(expected, actual)
  end

  # The value of a result expression (see the README's Expressions).
  def evaluate(expr, scope)
    if expr.is_a?(String) && expr.start_with?("$$")
      expr[1..]
    elsif expr.is_a?(String) && expr.start_with?("$")
      root, *path = expr[1..].split(".")
      fail!("expression `#{expr}`: unknown reference") unless %w[context results config attempt].include?(root)
      cur = scope.fetch(root, ABSENT)
      fail!("expression `#{expr}`: not available here") if ABSENT.equal?(cur)
      path.each do |seg|
        if cur.is_a?(Hash) && cur.key?(seg)
          cur = cur[seg]
        elsif cur.is_a?(Array) && seg.match?(/\A\d+\z/) && seg.to_i < cur.size
          cur = cur[seg.to_i]
        else
          fail!("expression `#{expr}`: no `#{seg}` in #{cur.inspect}")
        end
      end
      cur
    elsif expr.is_a?(Array)
      expr.map { |x| evaluate(x, scope) }
    elsif expr.is_a?(Hash)
      if expr.size == 1 && expr.key?("sum")
        values = expr["sum"].map { |x| evaluate(x, scope) }
        values.each { |v| fail!("`sum` of a non-number #{v.inspect}") unless v.is_a?(Numeric) }
        values.all?(Integer) ? values.sum : values.sum.to_f
      elsif expr.size == 1 && expr.key?("literal")
        expr["literal"]
      elsif expr.size == 1 && expr.key?("object")
        expr["object"].transform_values { |v| evaluate(v, scope) }
      else
        expr.transform_values { |v| evaluate(v, scope) }
      end
    else
      expr
    end
  end

  def check_error(expected, err, what)
    if expected.is_a?(String)
      code = expected
      details = nil
      contains = []
    else
      code = expected["code"]
      details = expected["details"]
      contains = expected.fetch("message_contains", [])
    end
    fail!("#{what}: expected error `#{code}`, got `#{err.code}`: #{err.message}") unless err.code == code
    fail!("#{what}: `#{code}` raised as #{err.class}") unless err.instance_of?(Tasker::ERROR_CLASSES.fetch(code))
    if !details.nil? && !json_subset(details, err.details)
      fail!("#{what}: error details #{err.details.inspect} do not contain #{details.inspect}")
    end
    contains.each do |s|
      fail!("#{what}: error message `#{err.message}` does not contain `#{s}`") unless err.message.include?(s)
    end
  end

  def monotonic
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  # One vector's run.
  class Run
    def initialize(vector, tasker, lease_ms)
      @v = vector
      @t = tasker
      @lease_ms = lease_ms
      @task_id = 0
      @handlers = []
      @claims = Hash.new(0)
      @tokens = {}
      @held = []
      @actions = vector.fetch("actions", [])
      @fired = Array.new(@actions.size, false)
      @not_before = {}
      # With "via": "worker_session": the session the run claims and reports through.
      @session = nil
    end

    def fail!(msg)
      Conformance.fail!(msg)
    end

    # A call through the gem that must succeed.
    def call(what, &blk)
      blk.call
    rescue Tasker::Error => e
      fail!("#{what} failed: #{e.class}: #{e.message}")
    end

    def expect_failure(expected, what, &blk)
      out = blk.call
      fail!("#{what} succeeded (#{out.inspect}) but was expected to fail with #{expected.inspect}")
    rescue Tasker::Error => e
      Conformance.check_error(expected, e, what)
    end

    def checked(expect_error, what, &blk)
      if expect_error.nil?
        call(what, &blk)
      else
        expect_failure(expect_error, what, &blk)
        nil
      end
    end

    def run
      tpl = @v.fetch("template")
      ns = tpl["namespace"]
      name = tpl["name"]
      # A step with wait_for has no handler (the engine runs it).
      tpl.fetch("steps", []).each do |s|
        @handlers << s["handler"] unless s["handler"].nil? || @handlers.include?(s["handler"])
      end
      expect = @v.fetch("expect")
      if expect.key?("register_error")
        expect_failure(expect["register_error"], "register_template") { @t.register_template(tpl) }
        expect_failure(expect["register_error"], "validate_template") { @t.validate_template(tpl) }
        expect_failure("not_found", "get_template") { @t.get_template(ns, name) }
        return
      end
      call("register_template") { @t.register_template(tpl) }
      if @v["via"] == "worker_session"
        opened = call("worker_open") { @t.worker_open(handlers: @handlers, batch: 1, name: "conformance") }
        @session = opened["worker_id"]
      end

      create = { context: @v.fetch("context", {}) }
      create[:priority] = @v["priority"] if @v.key?("priority")
      # Scheduling vectors: more create_task fields (run_at, delay_ms, timeout_s).
      @v.fetch("create", {}).each { |k, x| create[k.to_sym] = x }
      idem = @v["idempotency"]
      create[:idempotency_key] = idem["key"] unless idem.nil?
      version = tpl["version"]
      if expect.key?("create_error")
        expect_failure(expect["create_error"], "create_task") { @t.create_task(ns, name, version, **create) }
        listed = @t.list_tasks(namespace: ns, name: name)
        fail!("a rejected create_task left tasks behind: #{listed}") unless listed["tasks"].empty?
        ev = @t.events(0, limit: 1000)
        fail!("a rejected create_task left events behind: #{ev}") unless ev["events"].empty?
        return
      end
      created = call("create_task") { @t.create_task(ns, name, version, **create) }
      fail!("create_task did not create a task: #{created}") unless created["created"] == true
      @task_id = created["task_id"]
      unless idem.nil?
        again = create.merge(context: idem.fetch("context", create[:context]))
        second = call("create_task again") { @t.create_task(ns, name, version, **again) }
        unless second["task_id"] == @task_id && second["created"] == false
          fail!("repeated create_task returned #{second}")
        end
      end

      fire { |a| a["when"] == "created" }
      drive
      unfired = @actions.each_with_index.reject { |_, i| @fired[i] }.map(&:first)
      fail!("actions never fired: #{unfired}") unless unfired.empty?

      task = call("get_task") { @t.get_task(@task_id) }
      unless idem.nil?
        third = call("create_task after the run") { @t.create_task(ns, name, version, **create) }
        unless [third["task_id"], third["created"], third["state"]] == [@task_id, false, task["state"]]
          fail!("create_task after the run returned #{third}")
        end
        n = @t.list_tasks(namespace: ns, name: name)["tasks"].size
        fail!("expected one task for the idempotency key, list_tasks shows #{n}") unless n == 1
      end
      problems = []
      expect.fetch("task", {}).each do |k, want|
        problems << "task.#{k}: expected #{want.inspect}, got #{task[k].inspect}" unless Conformance.json_eq(want, task[k])
      end
      steps = task["steps"].to_h { |s| [s["name"], s] }
      expect.fetch("steps", {}).each do |sname, want|
        unless steps.key?(sname)
          problems << "step #{sname} is not in the task"
          next
        end
        want.each do |k, w|
          got = steps[sname][k]
          ok = k == "error" ? Conformance.json_subset(w, got) : Conformance.json_eq(w, got)
          problems << "step #{sname}.#{k}: expected #{w.inspect}, got #{got.inspect}" unless ok
        end
      end
      if expect.key?("events")
        got = events
        problems << "events: expected #{expect['events']}, got #{got}" unless got == expect["events"]
      end
      fail!(problems.join("; ")) unless problems.empty?
    end

    def events
      out = []
      since = 0
      loop do
        page = call("events") { @t.events(since, task_id: @task_id, limit: 1000) }
        return out if page["events"].empty?

        page["events"].each { |e| out << (e.key?("step_name") ? "#{e['event']}:#{e['step_name']}" : e["event"]) }
        since = page["next_cursor"]
      end
    end

    def fire
      @actions.each_with_index do |a, i|
        next if @fired[i] || !yield(a)

        @fired[i] = true
        act(a)
      end
    end

    def fire_after(step, n, phase)
      fire do |a|
        at = a["after"] || {}
        at["step"] == step && at["attempt"] == n && at.fetch("phase", "reported") == phase
      end
    end

    # send_signal(task_id, signal, payload: EXPR) (only $context in scope).
    def signal_call(a)
      payload = a.key?("payload") ? Conformance.evaluate(a["payload"], { "context" => @v.fetch("context", {}) }) : nil
      -> { @t.send_signal(@task_id, a["signal"], payload: payload) }
    end

    # `explain_task`: each step named in `expect_steps` must have these fields in the
    # explanation (a step missing from it is a failure).
    def explain_action(a)
      resp = @t.explain_task(@task_id)
      a.fetch("expect_steps", {}).each do |name, fields|
        got = resp["steps"].find { |s| s["name"] == name }
        fail!("action #{a}: step #{name} is not in the explanation #{resp}") if got.nil?
        fields.each do |k, w|
          next if Conformance.json_eq(w, got[k])

          fail!("action #{a}: step #{name}: expected #{k} = #{w.inspect}, got #{got[k].inspect} (#{resp})")
        end
      end
    end

    def act(a)
      what = a["do"]
      step = a["step"]
      return explain_action(a) if what == "explain_task"

      blk =
        case what
        when "cancel_task" then -> { @t.cancel_task(@task_id, reason: a["reason"]) }
        when "retry_step" then -> { @t.retry_step(task_id: @task_id, step_name: step) }
        when "resolve_step"
          kw = { task_id: @task_id, step_name: step, reason: a["reason"] }
          kw[:result] = Conformance.evaluate(a["result"], { "context" => @v.fetch("context", {}) }) if a.key?("result")
          -> { @t.resolve_step(**kw) }
        when "report_stale"
          key = [step, a["attempt"]]
          fail!("report_stale: no claim number #{a['attempt']} of step #{step}") unless @tokens.key?(key)
          step_id, token = @tokens[key]
          case a["report"]
          when "complete" then -> { @t.complete_step(step_id, token, nil) }
          when "fail" then -> { @t.fail_step(step_id, token, { "message" => "stale" }) }
          when "heartbeat" then -> { @t.heartbeat(step_id, token) }
          else fail!("report_stale: unknown report `#{a['report']}`")
          end
        when "advance_clock"
          # Scheduling vectors: move the manual clock (config.clock: manual).
          -> { @t.call("advance_clock", { "ms" => a["ms"] }) }
        when "send_signal" then signal_call(a)
        else fail!("unknown action `#{what}`")
        end
      resp = checked(a["expect_error"], what) { blk.call }
      return if resp.nil?

      a.fetch("expect", {}).each do |k, w|
        fail!("action #{a}: expected #{k} = #{w.inspect}, got #{resp[k].inspect}") unless Conformance.json_eq(w, resp[k])
      end
    end

    # [[Tasker::Step, claim_token], ...] and whether a retry is scheduled.
    def claim(wait_ms)
      unless @session.nil?
        steps, _stops, idle, = call("worker_next") { @t.native.worker_next(@session, 1, wait_ms, nil) }
        steps = steps.map { |row| [Tasker::Step.from_wire(row), nil] }
        # A session that is not idle but got nothing has a retry scheduled.
        return [steps, steps.empty? && !idle ? "scheduled" : nil]
      end
      page = call("claim") { @t.claim(@handlers, limit: 1, wait_ms: wait_ms, worker_id: "conformance") }
      [page["steps"].map { |h| [Tasker::Step.from_h(h), h["claim_token"]] }, page["next_ready_at"]]
    end

    def drive
      MAX_LOOPS.times do
        steps, next_ready = claim(0)
        steps, = claim(5000) if steps.empty? && !next_ready.nil?
        unless steps.empty?
          handle(steps[0])
          next
        end
        unless @held.empty?
          delay = @held.max - Conformance.monotonic
          sleep delay if delay.positive?
          call("sweep") { @t.sweep }
          @held.clear
          next
        end
        idle = @actions.each_index.find { |i| !@fired[i] && @actions[i]["when"] == "idle" }
        unless idle.nil?
          @fired[idle] = true
          act(@actions[idle])
          next
        end
        return
      end
      fail!("the run did not settle within #{MAX_LOOPS} loops")
    end

    # The Ruby handler every step is given to: the vector's scripted outcome for this
    # claim, with `complete` expressions evaluated over the Tasker::Step.
    def handler(step)
      n = @claims[step.step_name]
      outcomes = @v.fetch("outcomes", {})
      unless outcomes.key?(step.step_name)
        fail!("unscripted attempt: claim #{n} of step #{step.step_name}") unless n == 1
        return { "complete" => nil }
      end
      script = outcomes[step.step_name]
      fail!("unscripted attempt: claim #{n} of step #{step.step_name}") if n > script.size
      outcome = script[n - 1].dup
      if outcome.key?("complete")
        scope = { "context" => step.context, "results" => step.results, "config" => step.config,
                  "attempt" => step.attempt }
        outcome["complete"] = Conformance.evaluate(outcome["complete"], scope)
      end
      outcome
    end

    # `worker_report` with the scripted outcome; its result must match `expect_report`
    # (a subset), else have the outcome the kind implies.
    def report(name, n, step, outcome)
      item, default =
        if outcome.key?("complete")
          [{ "step_id" => step.step_id, "result" => outcome["complete"] }, "completed"]
        elsif outcome.key?("fail")
          [{ "step_id" => step.step_id, "error" => { "message" => "scripted failure" }.merge(outcome["fail"]) }, "failed"]
        elsif outcome.key?("invalid_result")
          [{ "step_id" => step.step_id, "invalid_result" => outcome["invalid_result"] }, "failed"]
        elsif outcome.key?("release")
          [{ "step_id" => step.step_id, "release" => true }, "released"]
        else
          fail!("step #{name} claim #{n}: bad outcome for a worker session #{outcome}")
        end
      resp = call("worker_report") { @t.worker_report(@session, [item]) }
      got = resp["results"][0]
      want = outcome.fetch("expect_report", { "outcome" => default })
      fail!("step #{name} claim #{n}: worker_report gave #{got}, expected #{want}") unless Conformance.json_subset(want, got)
    end

    def handle(claimed)
      step, token = claimed
      name = step.step_name
      fail!("claimed a step of another task: #{step.inspect}") unless step.task_id == @task_id
      n = (@claims[name] += 1)
      @tokens[[name, n]] = [step.step_id, token]
      if @not_before.key?(name)
        started, ms = @not_before.delete(name)
        waited_ms = (Conformance.monotonic - started) * 1000
        if waited_ms + 2 < ms
          fail!("step #{name} was claimed again #{waited_ms.round} ms after a failure with retry_after_ms #{ms}")
        end
      end
      outcome = handler(step)
      if outcome.key?("claim_attempt") && !Conformance.json_eq(outcome["claim_attempt"], step.attempt)
        fail!("claim #{n} of step #{name}: expected attempt #{outcome['claim_attempt']}, got #{step.attempt}")
      end
      fire_after(name, n, "claimed")
      expect_error = outcome["expect_error"]
      if !@session.nil?
        report(name, n, step, outcome)
      elsif outcome.key?("complete")
        checked(expect_error, "complete_step") { @t.complete_step(step.step_id, token, outcome["complete"]) }
      elsif outcome.key?("fail")
        doc = { "message" => "scripted failure" }.merge(outcome["fail"])
        started = Conformance.monotonic
        checked(expect_error, "fail_step") { @t.fail_step(step.step_id, token, doc) }
        @not_before[name] = [started, doc["retry_after_ms"]] if doc.key?("retry_after_ms")
      elsif outcome.key?("hold")
        @held << Conformance.monotonic + (@lease_ms + 30) / 1000.0
      else
        fail!("step #{name} claim #{n}: bad outcome #{outcome}")
      end
      fire_after(name, n, "reported")
    end
  end

  # Appends `ruby <store> <vector> ok|FAIL` to the file TASKER_CONFORMANCE_LEDGER names:
  # scripts/conformance-coverage checks there that every runner ran every vector on both
  # stores (tests/conformance/README.md).
  def self.record_in_ledger(store, vector, ok)
    ledger = ENV["TASKER_CONFORMANCE_LEDGER"]
    return if ledger.nil? || ledger.empty?

    File.open(ledger, "a") { |f| f.write("ruby\t#{store}\t#{vector}\t#{ok ? 'ok' : 'FAIL'}\n") }
  end

  # The tests: one per vector and store.
  module Tests
    def test_the_vectors_are_there
      assert_operator VECTORS.size, :>=, MIN_VECTORS, "only #{VECTORS.size} vectors in #{VECTORS_DIR}"
    end

    VECTORS.each do |path|
      define_method("test_vector_#{File.basename(path, '.json')}") do
        ok = false
        begin
          v = JSON.parse(File.read(path))
          config = settings.merge("env" => "conformance", "lease_ms" => 30_000, "sweep_interval_ms" => 3_600_000,
                                  "claim_poll_ms" => 20).merge(v.fetch("config", {}))
          begin
            Tasker.open(config) do |t|
              Run.new(v, t, Integer(config["lease_ms"])).run
            end
          rescue VectorFailure => e
            flunk("vector #{v['name']}: #{e.message}")
          end
          ok = true
          pass
        ensure
          Conformance.record_in_ledger(store, File.basename(path, ".json"), ok)
        end
      end
    end
  end
end

TaskerTest.on_both_stores("Conformance", Conformance::Tests)
