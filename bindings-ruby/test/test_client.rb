# frozen_string_literal: true

require_relative "test_helper"

# The client: every operation through the gem, its errors, and bad input of every kind.
module ClientTests
  include TaskerTest

  ORDER = TaskerTest.chain("order", [["validate", []], ["charge", ["validate"]], ["ship", ["charge"]]])

  def test_open_ping_close
    t = Tasker.open(settings)
    assert_equal({ "ok" => true, "version" => Tasker::VERSION }, t.ping)
    refute t.closed?
    t.close
    assert t.closed?
    t.close # idempotent
    e = assert_raises(Tasker::ClosedError) { t.ping }
    assert_equal "closed", e.code
    assert_kind_of Tasker::Error, e
    assert_kind_of StandardError, e
  end

  def test_block_form_closes_and_returns_the_value
    kept = nil
    value = Tasker.open(settings) do |t|
      kept = t
      t.register_template(ORDER)["registered"]
    end
    assert_equal true, value
    assert kept.closed?
    assert_raises(Tasker::ClosedError) { kept.create_task("t", "order") }
  end

  def test_block_form_closes_when_the_block_raises
    kept = nil
    assert_raises(RuntimeError) do
      Tasker.open(settings) do |t|
        kept = t
        raise "boom"
      end
    end
    assert kept.closed?
  end

  def test_open_with_url_and_keyword_settings
    s = settings
    t = Tasker.open(s.delete("database_url"), **s.transform_keys(&:to_sym), lease_ms: 1234)
    assert_equal 1234, t.native.lease_ms
    assert t.ping["ok"]
  ensure
    t&.close
  end

  def test_open_rejects_bad_settings
    e = assert_raises(Tasker::InvalidArgumentError) { Tasker.open(settings(lease_msec: 5)) }
    assert_includes e.message, "lease_msec"
    assert_equal "invalid_argument", e.code
    assert_raises(Tasker::InvalidArgumentError) { Tasker.open("mysql://nope") }
    e = assert_raises(TypeError) { Tasker.open(42) }
    assert_includes e.message, "config"
    e = assert_raises(TypeError) { Tasker.open(settings(lease_ms: Object.new)) }
    assert_includes e.message, "lease_ms"
  end

  def test_a_client_is_made_only_by_open
    assert_raises(TypeError) { Tasker::Client.new("sqlite://x.db") }
    assert_raises(TypeError, NoMethodError) { Tasker::Native::Handle.new }
    assert_raises(TypeError) { Tasker::Native::Handle.open(nil) }
  end

  def test_register_from_hash_yaml_and_path
    r = tasker.register_template(ORDER)
    assert_equal({ "name" => "order", "namespace" => "t", "registered" => true, "steps" => 3, "version" => "1",
                   "unchanged" => false }, r)
    again = tasker.register_template(ORDER)
    assert_equal [false, true], again.values_at("registered", "unchanged")
    assert_match(/nothing changed/, again["note"])

    yaml = "namespace: t\nname: y\nversion: '2'\nsteps:\n  - {name: a, handler: a}\n"
    # A positional String is a path, never guessed to be YAML text.
    assert_match(/yaml:/, assert_raises(TypeError) { tasker.register_template(yaml) }.message)
    assert_equal "y", tasker.register_template(yaml: yaml)["name"]
    path = File.join(@dir, "p.yaml")
    File.write(path, yaml.sub("name: y", "name: p"))
    assert_equal "p", tasker.register_template(path)["name"]
    assert_equal "p", tasker.register_template(Pathname.new(path))["name"]
    assert_equal "p", tasker.register_template(path: path)["name"]
    # Symbol keys are as good as String keys.
    sym = { namespace: "t", name: "sym", version: "1", steps: [{ name: :a, handler: "a" }] }
    assert_equal "sym", tasker.register_template(template: sym)["name"]
    assert_equal "a", tasker.get_template("t", "sym")["steps"][0]["name"]
  end

  def test_register_errors
    e = assert_raises(Tasker::InvalidTemplateError) do
      tasker.register_template(TaskerTest.chain("cyc", [["a", ["b"]], ["b", ["a"]]]))
    end
    assert_equal "invalid_template", e.code
    assert_equal "cycle", e.details["problem"]
    tasker.register_template(ORDER)
    changed = ORDER.merge("steps" => ORDER["steps"][0, 1])
    e = assert_raises(Tasker::ConflictError) { tasker.register_template(changed) }
    assert_match(/steps\.charge removed; steps\.ship removed/, e.message)
    assert_match(/new version \(e\.g\. version: 2\)/, e.message)
    assert_equal "2", e.details["next_version"]
    assert_equal true, tasker.register_template(changed, replace: true)["registered"]
    assert_raises(Tasker::NotFoundError) { tasker.register_template(File.join(@dir, "missing.yaml")) }
    assert_raises(ArgumentError) { tasker.register_template }
    assert_raises(ArgumentError) { tasker.register_template(ORDER, yaml: "x: 1\n") }
    e = assert_raises(TypeError) { tasker.register_template(42) }
    assert_includes e.message, "Integer"
    assert_raises(TypeError) { tasker.register_template(ORDER, replace: "yes") }
  end

  def test_validate_and_get_template
    v = tasker.validate_template(ORDER)
    assert_equal true, v["valid"]
    assert_raises(Tasker::NotFoundError) { tasker.get_template("t", "order") }
    tasker.register_template(ORDER)
    assert_equal %w[validate charge ship], tasker.get_template("t", "order")["steps"].map { |s| s["name"] }
    assert_equal "1", tasker.get_template("t", "order", "1")["version"]
  end

  def test_create_and_get_task
    tasker.register_template(ORDER)
    created = tasker.create_task("t", "order", "1", context: { order_id: 42, items: [{ sku: :a1, qty: 2 }] })
    assert_equal true, created["created"]
    task = tasker.get_task(created["task_id"])
    assert_equal({ "order_id" => 42, "items" => [{ "sku" => "a1", "qty" => 2 }] }, task["context"])
    assert_equal %w[validate charge ship], task["steps"].map { |s| s["name"] }
    assert_equal "pending", task["state"]
    # version nil: the highest; context defaults to {}.
    other = tasker.create_task("t", "order")
    assert_equal({}, tasker.get_task(other["task_id"])["context"])
  end

  def test_json_values_round_trip
    tasker.register_template(ORDER)
    ctx = {
      "s" => "héllo ✓ \u0000 \"q\"", "i" => -(2**63), "u" => 2**64 - 1, "f" => 1.5, "e" => 1e-300,
      "t" => true, "n" => nil, "a" => [1, [2, [3]]], "h" => { "nested" => {} }, "empty" => []
    }
    id = tasker.create_task("t", "order", context: ctx)["task_id"]
    assert_equal ctx, tasker.get_task(id)["context"]
    latin = "caf\xE9".dup.force_encoding("ISO-8859-1")
    id = tasker.create_task("t", "order", context: { latin => latin })["task_id"]
    assert_equal({ "café" => "café" }, tasker.get_task(id)["context"])
    assert_equal Encoding::UTF_8, tasker.get_task(id)["context"].keys.first.encoding
  end

  def test_idempotent_create
    tasker.register_template(ORDER)
    a = tasker.create_task("t", "order", context: { "n" => 1 }, idempotency_key: "k-1")
    b = tasker.create_task("t", "order", context: { "n" => 2 }, idempotency_key: "k-1")
    assert_equal a["task_id"], b["task_id"]
    assert_equal [true, false], [a["created"], b["created"]]
    assert_equal({ "n" => 1 }, tasker.get_task(a["task_id"])["context"])
  end

  def test_create_tasks_in_one_batch
    tasker.register_template(ORDER)
    first = tasker.create_task("t", "order", idempotency_key: "k-0")
    out = tasker.create_tasks([
      { namespace: "t", name: "order", idempotency_key: "k-0" },
      { namespace: "t", name: "order", context: { "n" => 1 }, idempotency_key: "k-1" },
      { "namespace" => "t", "name" => "order", "context" => { "n" => 2 }, "idempotency_key" => "k-1" },
      { namespace: "t", name: "order", priority: 3 }
    ])
    assert_equal [false, true, false, true], out.map { |t| t["created"] }
    assert_equal first["task_id"], out[0]["task_id"]
    assert_equal out[1]["task_id"], out[2]["task_id"]
    assert_equal({ "n" => 1 }, tasker.get_task(out[1]["task_id"])["context"])
    assert_equal [], tasker.create_tasks([])
    before = fingerprint(tasker)
    e = assert_raises(Tasker::NotFoundError) do
      tasker.create_tasks([{ namespace: "t", name: "order" }, { namespace: "t", name: "nope" }])
    end
    assert e.message.start_with?("tasks[1]"), e.message
    assert_equal 1, e.details["index"]
    assert_raises(TypeError) { tasker.create_tasks([{ namespace: "t", name: "order", priority: "high" }]) }
    assert_raises(ArgumentError) { tasker.create_tasks([{ namespace: "t", name: "order", idempotencyKey: "x" }]) }
    assert_raises(TypeError) { tasker.create_tasks("nope") }
    assert_equal before, fingerprint(tasker)
  end

  def test_create_errors_store_nothing
    schema = { "type" => "object", "required" => ["order_id"],
               "properties" => { "order_id" => { "type" => "integer" } } }
    tasker.register_template(ORDER.merge("name" => "strict", "input_schema" => schema))
    before = fingerprint(tasker)
    e = assert_raises(Tasker::SchemaViolationError) { tasker.create_task("t", "strict", context: { "order_id" => "x" }) }
    assert_equal "schema_violation", e.code
    refute_empty e.details["errors"]
    assert_raises(Tasker::NotFoundError) { tasker.create_task("t", "nope") }
    assert_equal before, fingerprint(tasker)
  end

  def test_wrong_argument_types_name_the_argument
    tasker.register_template(ORDER)
    before = fingerprint(tasker)
    cases = {
      "namespace" => -> { tasker.create_task(1, "order") },
      "name" => -> { tasker.create_task("t", :order) },
      "version" => -> { tasker.create_task("t", "order", 1) },
      "idempotency_key" => -> { tasker.create_task("t", "order", idempotency_key: 5) },
      "priority" => -> { tasker.create_task("t", "order", priority: "high") },
      "context.when" => -> { tasker.create_task("t", "order", context: { when: Time.now }) },
      "context.items[1]" => -> { tasker.create_task("t", "order", context: { items: [1, Object.new] }) },
      "Hash keys" => -> { tasker.create_task("t", "order", context: { 1 => "one" }) },
      "task_id" => -> { tasker.get_task("1") },
      "state" => -> { tasker.list_tasks(state: :running) },
      "step_id" => -> { tasker.retry_step(1.5) },
      "reason" => -> { tasker.cancel_task(1, reason: 3) },
      "types" => -> { tasker.events(0, types: "step.failed") },
      "types[0]" => -> { tasker.events(0, types: [:x]) },
      "since" => -> { tasker.events(nil) },
      "op" => -> { tasker.call(:ping) },
      "request" => -> { tasker.call("ping", [1]) }
    }
    cases.each do |needle, call|
      e = assert_raises(TypeError, "expected TypeError for #{needle}") { call.call }
      assert_includes e.message, needle
    end
    e = assert_raises(ArgumentError) { tasker.create_task("t", "order", context: { x: Float::NAN }) }
    assert_includes e.message, "context.x"
    e = assert_raises(RangeError) { tasker.create_task("t", "order", context: { big: 2**70 }) }
    assert_includes e.message, "context.big"
    e = assert_raises(ArgumentError) { tasker.create_task("t", "order", context: { b: "\xFF\xFE".b }) }
    assert_includes e.message, "context.b"
    e = assert_raises(ArgumentError) { tasker.create_task("t", "order", context: { u: "\xFF".dup.force_encoding("UTF-8") }) }
    assert_includes e.message, "context.u"
    cyclic = []
    cyclic << cyclic
    e = assert_raises(ArgumentError) { tasker.create_task("t", "order", context: { c: cyclic }) }
    assert_includes e.message, "circular"
    assert_raises(ArgumentError) { tasker.retry_step(task_id: 1) }
    assert_raises(ArgumentError) { tasker.create_task("t") }
    assert_raises(ArgumentError) { tasker.create_task("t", "order", contxt: {}) }
    assert_equal before, fingerprint(tasker)
    # The engine checks values the gem does not: a negative limit.
    assert_raises(Tasker::InvalidArgumentError) { tasker.list_tasks(limit: -1) }
    assert_raises(Tasker::UnknownOperationError) { tasker.call("no_such_op") }
    assert_raises(Tasker::InvalidJsonError) { tasker.call_json("ping", "{not json") }
    assert_raises(TypeError) { tasker.call_json("ping", nil) }
  end

  def test_list_tasks_filters_and_pages
    tasker.register_template(ORDER)
    ids = Array.new(5) { tasker.create_task("t", "order")["task_id"] }
    page = tasker.list_tasks(limit: 2)
    assert_equal ids.reverse[0, 2], page["tasks"].map { |t| t["id"] }
    rest = tasker.list_tasks(limit: 10, cursor: page["next_cursor"])
    assert_equal ids.reverse[2..], rest["tasks"].map { |t| t["id"] }
    tasker.cancel_task(ids[0])
    assert_equal [ids[0]], tasker.list_tasks(state: "cancelled")["tasks"].map { |t| t["id"] }
    assert_equal 5, tasker.list_tasks(namespace: "t", name: "order")["tasks"].size
  end

  def test_cancel_explain_retry_resolve
    tasker.register_template(ORDER.merge("defaults" => { "retry" => { "max_attempts" => 1 } }))
    id = tasker.create_task("t", "order", context: { n: 1 })["task_id"]
    explained = tasker.explain_task(id)
    assert_equal "waiting_for_worker", explained["steps"][0]["status"]
    # A step in error through the low-level protocol, then an operator retry.
    claimed = tasker.claim(["validate"], limit: 1)["steps"][0]
    tasker.fail_step(claimed["step_id"], claimed["claim_token"], { message: "nope", retryable: false })
    assert_equal "error", tasker.get_task(id)["state"]
    assert_equal "failed", tasker.explain_task(id)["steps"][0]["status"]
    assert_equal "ready", tasker.retry_step(task_id: id, step_name: "validate")["state"]
    e = assert_raises(Tasker::InvalidStateError) { tasker.retry_step(claimed["step_id"]) }
    assert_equal "invalid_state", e.code
    resolved = tasker.resolve_step(task_id: id, step_name: "validate", result: { ok: 1 }, reason: "by hand")
    assert_equal "resolved_manually", resolved["state"]
    charge = tasker.claim(["charge"])["steps"][0]
    assert_equal({ "validate" => { "ok" => 1 } }, charge["results"])
    tasker.complete_step(charge["step_id"], charge["claim_token"], { paid: true })
    assert_equal true, tasker.cancel_task(id, reason: "customer asked")["changed"]
    assert_equal false, tasker.cancel_task(id)["changed"]
    assert_equal "cancelled", tasker.get_task(id)["state"]
    assert_raises(Tasker::NotFoundError) { tasker.cancel_task(999_999) }
  end

  def test_stats_and_events
    tasker.register_template(ORDER)
    id = tasker.create_task("t", "order")["task_id"]
    s = tasker.stats
    assert_equal 1, s["tasks"]["pending"]
    assert_operator s["last_event_id"], :>=, 4
    names = all_events(tasker, task_id: id).map { |e| e["event"] }
    assert_equal %w[task.created step.ready step.created step.created], names
    only = tasker.events(0, types: ["step.ready"])["events"]
    assert_equal ["validate"], only.map { |e| e["step_name"] }
    assert_raises(Tasker::InvalidArgumentError) { tasker.events(0, types: ["step.nope"]) }
  end

  def test_on_delivers_events_in_order_and_survives_a_raising_block
    tasker.register_template(ORDER)
    seen = Queue.new
    log = StringIO.new
    Tasker.logger = Logger.new(log)
    calls = 0
    sub = tasker.on("step.ready") do |e|
      calls += 1
      raise "callback failure" if calls == 1

      seen << e["task_id"]
    end
    assert sub.active?
    a = tasker.create_task("t", "order")["task_id"]
    b = tasker.create_task("t", "order")["task_id"]
    assert_equal b, Timeout.timeout(10) { seen.pop }
    assert_includes log.string, "callback failure"
    refute_nil a
    all = Queue.new
    sub2 = tasker.on("*", since: 0) { |e| all << e["event"] }
    assert_equal "task.created", Timeout.timeout(10) { all.pop }
    sub.stop
    refute sub.active?
    sub.stop # idempotent
    e = assert_raises(Tasker::InvalidArgumentError) { tasker.on("step.nope") { nil } }
    assert_includes e.message, "step.nope"
    assert_raises(ArgumentError) { tasker.on("step.ready") }
    tasker.close
    refute sub2.active?
  ensure
    Tasker.logger = TaskerTest::QUIET
  end

  def test_a_subscription_can_stop_itself
    tasker.register_template(ORDER)
    got = Queue.new
    sub = nil
    sub = tasker.on("task.created") do |e|
      got << e["task_id"]
      sub.stop
    end
    2.times { tasker.create_task("t", "order") }
    Timeout.timeout(10) { got.pop }
    assert TaskerTest.wait_until { !sub.active? }
    sleep 0.2
    assert_equal 0, got.size
  end

  def test_every_method_after_close_raises_closed_error
    tasker.register_template(ORDER)
    id = tasker.create_task("t", "order")["task_id"]
    tasker.close
    calls = [
      -> { tasker.ping }, -> { tasker.register_template(ORDER) }, -> { tasker.create_task("t", "order") },
      -> { tasker.get_task(id) }, -> { tasker.list_tasks }, -> { tasker.explain_task(id) },
      -> { tasker.cancel_task(id) }, -> { tasker.retry_step(1) }, -> { tasker.resolve_step(1) },
      -> { tasker.stats }, -> { tasker.events(0) }, -> { tasker.events(0, wait_ms: 100) },
      -> { tasker.on("step.failed") { nil } }, -> { tasker.claim(["validate"]) }, -> { tasker.sweep },
      -> { tasker.call_json("ping", "{}") }, -> { tasker.worker_stats("w1") }
    ]
    calls.each_with_index do |c, i|
      e = assert_raises(Tasker::ClosedError, "call #{i}") { c.call }
      assert_equal "closed", e.code
    end
  end

  def test_every_code_has_a_class
    assert_equal Tasker::Native.error_codes.sort, Tasker::ERROR_CLASSES.keys.sort
    Tasker::ERROR_CLASSES.each do |code, cls|
      assert_operator cls, :<, Tasker::Error
      e = Tasker::Error.build(code, "m", { "k" => 1 })
      assert_instance_of cls, e
      assert_equal [code, "m", { "k" => 1 }], [e.code, e.message, e.details]
    end
  end

  def test_two_clients_on_one_database_share_it
    s = settings
    a = Tasker.open(s)
    b = Tasker.open(s)
    a.register_template(ORDER)
    id = b.create_task("t", "order")["task_id"]
    assert_equal "pending", a.get_task(id)["state"]
    a.close
    assert_equal "pending", b.get_task(id)["state"]
  ensure
    a&.close
    b&.close
  end

  def test_other_threads_run_while_a_call_waits
    ticks = 0
    stop = false
    ticker = Thread.new do
      until stop
        ticks += 1
        sleep 0.001
      end
    end
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    page = tasker.events(0, wait_ms: 400)
    waited = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
    stop = true
    ticker.join
    assert_empty page["events"]
    assert_operator waited, :>=, 0.35
    # A thread holding the GVL through the wait would have let the ticker run ~0 times.
    assert_operator ticks, :>, 50
  end

  def test_a_waiting_call_can_be_interrupted
    waiter = Thread.new do
      tasker.events(0, wait_ms: 30_000)
      :finished
    rescue RuntimeError => e
      e.message
    end
    sleep 0.2
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    waiter.raise(RuntimeError, "stop waiting")
    assert_equal "stop waiting", waiter.value
    assert_operator Process.clock_gettime(Process::CLOCK_MONOTONIC) - started, :<, 5
    killed = Thread.new { tasker.events(0, wait_ms: 30_000) }
    sleep 0.2
    killed.kill
    assert killed.join(5), "Thread#kill did not end the wait"
    assert_equal "ok", tasker.ping["ok"] ? "ok" : "broken"
  end
end

TaskerTest.on_both_stores("Client", ClientTests)
