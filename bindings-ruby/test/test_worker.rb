# frozen_string_literal: true

require_relative "test_helper"

# Tasker::Worker over core's worker sessions: blocks and handler classes, failures of
# every kind, stop signals, start/stop, the GVL, and bad input.
module WorkerTests
  include TaskerTest

  DIAMOND = TaskerTest.chain("diamond", [["validate", []], ["reserve", ["validate"]], ["charge", ["validate"]],
                                         ["ship", %w[reserve charge]]])

  class ValidateOrder < Tasker::StepHandler
    def call(step)
      raise "instance state leaked between steps" if @seen

      @seen = true
      { "order" => step.context["order_id"], "handler_class" => self.class.name.split("::").last }
    end
  end

  class Ship < Tasker::StepHandler
    handler_name "ship"

    def call(step)
      { "parents" => step.results.keys.sort, "paid" => step.results["charge"]["paid"] }
    end
  end

  def one_step(name = "only", **extra)
    tasker.register_template(TaskerTest.chain(name, [[name, []]], **extra))
  end

  def task_of(created)
    tasker.get_task(created["task_id"])
  end

  def test_blocks_and_handler_classes_run_a_diamond
    tasker.register_template(DIAMOND.merge("steps" => DIAMOND["steps"].map do |s|
      s["name"] == "validate" ? s.merge("handler" => "validate_order") : s
    end))
    created = Array.new(3) { |i| tasker.create_task("t", "diamond", context: { order_id: i + 1 }) }
    worker = Tasker::Worker.new(tasker, concurrency: 2)
    worker.handle(ValidateOrder)
    worker.handle("reserve") { |step| { "reserved" => step.results["validate"]["order"] } }
    worker.handle("charge", ->(step) { { "paid" => step.context["order_id"] * 10, "attempt" => step.attempt } })
    worker.handle(Ship)
    assert_equal %w[charge reserve ship validate_order], worker.handler_names
    stats = worker.run_until_idle
    assert_equal Tasker::WorkerStats.new(completed: 12, failed: 0, lost: 0, released: 0), stats
    created.each_with_index do |c, i|
      task = task_of(c)
      assert_equal "complete", task["state"]
      steps = task["steps"].to_h { |s| [s["name"], s["result"]] }
      assert_equal({ "order" => i + 1, "handler_class" => "ValidateOrder" }, steps["validate"])
      assert_equal({ "reserved" => i + 1 }, steps["reserve"])
      assert_equal({ "paid" => (i + 1) * 10, "attempt" => 1 }, steps["charge"])
      assert_equal({ "parents" => %w[charge reserve], "paid" => (i + 1) * 10 }, steps["ship"])
    end
    refute worker.running?
    assert_equal stats, worker.stats
  end

  def test_handler_results_may_use_symbols_and_any_json
    one_step
    c = tasker.create_task("t", "only")
    w = Tasker::Worker.new(tasker, handlers: { "only" => ->(_s) { { ok: true, list: [1, 2.5, nil, :sym], "s" => "✓" } } })
    w.run_until_idle
    assert_equal({ "ok" => true, "list" => [1, 2.5, nil, "sym"], "s" => "✓" }, task_of(c)["steps"][0]["result"])
  end

  def test_permanent_error_fails_at_once_with_its_details
    one_step
    c = tasker.create_task("t", "only")
    w = Tasker::Worker.new(tasker)
    w.handle("only") { raise Tasker::PermanentError.new("card declined", details: { "gateway" => "sandbox" }) }
    stats = w.run_until_idle
    assert_equal [0, 1], [stats.completed, stats.failed]
    step = task_of(c)["steps"][0]
    assert_equal ["error", 1], step.values_at("state", "attempts")
    err = step["error"]
    assert_equal "card declined", err["message"]
    assert_equal "PermanentError", err["kind"]
    assert_equal "Tasker::PermanentError", err["exception"]
    assert_equal false, err["retryable"]
    assert_equal({ "gateway" => "sandbox" }, err["details"])
    assert_equal "error", task_of(c)["state"]
  end

  def test_retryable_error_waits_retry_after
    one_step
    c = tasker.create_task("t", "only")
    times = []
    w = Tasker::Worker.new(tasker)
    w.handle("only") do |step|
      times << Process.clock_gettime(Process::CLOCK_MONOTONIC)
      raise Tasker::RetryableError.new("rate limited", retry_after: 0.3) if step.attempt == 1

      { "attempt" => step.attempt }
    end
    stats = w.run_until_idle
    assert_equal [1, 1], [stats.completed, stats.failed]
    assert_equal({ "attempt" => 2 }, task_of(c)["steps"][0]["result"])
    # The backoff is 1-5 ms: only retry_after explains a 300 ms pause.
    assert_operator times[1] - times[0], :>=, 0.29
    failure = TaskerTest.all_events(tasker, task_id: c["task_id"], types: ["step.retry_scheduled"])[0]
    assert_equal 300, failure["details"]["error"]["retry_after_ms"]
    assert_equal "RetryableError", failure["details"]["error"]["kind"]
  end

  def test_any_exception_is_a_retryable_failure_and_the_worker_goes_on
    one_step("flaky", "defaults" => { "retry" => { "max_attempts" => 4, "base_ms" => 1, "max_ms" => 2, "jitter" => 0 } })
    c = tasker.create_task("t", "flaky")
    raised = [ZeroDivisionError, NotImplementedError, NoMemoryError]
    w = Tasker::Worker.new(tasker)
    w.handle("flaky") do |step|
      cls = raised[step.attempt - 1]
      raise cls, "attempt #{step.attempt} broke" if cls

      "fine"
    end
    stats = w.run_until_idle
    assert_equal [1, 3], [stats.completed, stats.failed]
    step = task_of(c)["steps"][0]
    assert_equal ["complete", 4, "fine"], step.values_at("state", "attempts", "result")
    docs = TaskerTest.all_events(tasker, task_id: c["task_id"], types: ["step.retry_scheduled"])
                     .map { |e| e["details"]["error"] }
    assert_equal %w[ZeroDivisionError NotImplementedError NoMemoryError], docs.map { |d| d["kind"] }
    assert(docs.all? { |d| d["retryable"] == true })
    assert_equal "attempt 1 broke", docs[0]["message"]
    assert_includes docs[0]["backtrace"], "test_worker.rb"
  end

  def test_a_result_that_is_not_json_fails_only_that_step
    tasker.register_template(TaskerTest.chain("pair", [["bad", []], ["good", []]]))
    c = tasker.create_task("t", "pair")
    w = Tasker::Worker.new(tasker, handlers: { "bad" => ->(_s) { { "when" => Time.now } }, "good" => ->(_s) { 1 } })
    stats = w.run_until_idle
    assert_equal 1, stats.completed
    steps = task_of(c)["steps"].to_h { |s| [s["name"], s] }
    assert_equal "complete", steps["good"]["state"]
    assert_equal "error", steps["bad"]["state"]
    assert_equal 1, steps["bad"]["attempts"]
    assert_equal "invalid_result", steps["bad"]["error"]["kind"]
    assert_includes steps["bad"]["error"]["message"], "result.when"
  end

  def test_a_cancelled_task_stops_its_running_step
    one_step
    c = tasker.create_task("t", "only")
    inside = Queue.new
    saw = Queue.new
    w = Tasker::Worker.new(tasker)
    w.handle("only") do |step|
      inside << true
      TaskerTest.wait_until(timeout: 20) { step.cancelled? }
      saw << step.stop_reason
      "too late"
    end
    w.start
    Timeout.timeout(20) { inside.pop }
    tasker.cancel_task(c["task_id"])
    assert_equal "cancelled", Timeout.timeout(20) { saw.pop }
    stats = w.stop
    assert_equal 0, stats.completed
    task = task_of(c)
    assert_equal "cancelled", task["state"]
    assert_equal "cancelled", task["steps"][0]["state"]
  end

  # Two steps in one batch; the first handler to run cancels the other's task before
  # that handler starts: the stop reaches the waiting step, which goes back unrun.
  def test_a_cancel_before_the_handler_starts_keeps_it_from_running
    one_step
    ids = Array.new(2) { tasker.create_task("t", "only")["task_id"] }
    ran = []
    w = Tasker::Worker.new(tasker, batch_size: 2)
    w.handle("only") do |step|
      ran << step.task_id
      if ran.size == 1
        tasker.cancel_task(ids.find { |id| id != step.task_id })
        sleep 0.3 # the stop arrives while the other step waits its turn
      end
      1
    end
    stats = w.run_until_idle
    assert_equal 1, ran.size, "the cancelled step's handler ran: #{ran}"
    assert_equal 1, stats.completed
    assert_equal %w[cancelled complete], ids.map { |id| tasker.get_task(id)["state"] }.sort
  end

  def test_start_and_stop
    one_step
    w = Tasker::Worker.new(tasker, concurrency: 3)
    w.handle("only") { |step| step.context["n"] * 2 }
    assert_same w, w.start
    assert w.running?
    refute_nil w.worker_id
    assert_raises(Tasker::InvalidStateError) { w.start }
    assert_raises(Tasker::InvalidStateError) { w.handle("late") { nil } }
    ids = Array.new(10) { |n| tasker.create_task("t", "only", context: { n: n })["task_id"] }
    assert TaskerTest.wait_until(timeout: 20) { ids.all? { |id| tasker.get_task(id)["state"] == "complete" } }
    # The session counts a report once its transaction is back.
    assert TaskerTest.wait_until(timeout: 10) { w.stats.completed == 10 }, w.stats.inspect
    stats = w.stop
    assert_equal 10, stats.completed
    refute w.running?
    assert_nil w.worker_id
    assert_equal stats, w.stop # idempotent
    assert_equal [0, 2, 4], ids.first(3).map { |id| tasker.get_task(id)["steps"][0]["result"] }
    # It starts again with a new session.
    w.start
    id = tasker.create_task("t", "only", context: { n: 21 })["task_id"]
    assert TaskerTest.wait_until(timeout: 20) { tasker.get_task(id)["state"] == "complete" }
    assert_equal 1, w.stop.completed
  end

  def test_stop_hands_back_steps_not_started
    one_step("slow")
    5.times { tasker.create_task("t", "slow") }
    started = Queue.new
    w = Tasker::Worker.new(tasker, concurrency: 1, batch_size: 5)
    w.handle("slow") do
      started << true
      sleep 0.3
      "done"
    end
    w.start
    Timeout.timeout(20) { started.pop }
    stats = w.stop
    assert_equal 1, stats.completed
    assert_operator stats.released, :>=, 1
    states = tasker.list_tasks["tasks"].map { |t| t["state"] }
    assert_equal 1, states.count("complete")
    # Released steps are claimable at once, with their attempt not counted.
    rest = Tasker::Worker.new(tasker, handlers: { "slow" => ->(s) { s.attempt } }).run_until_idle
    assert_equal 4, rest.completed
    tasker.list_tasks["tasks"].each { |t| assert_equal "complete", t["state"] }
  end

  def test_handlers_run_concurrently
    one_step("meet")
    4.times { tasker.create_task("t", "meet") }
    lock = Mutex.new
    inside = 0
    peak = 0
    w = Tasker::Worker.new(tasker, concurrency: 4)
    w.handle("meet") do
      lock.synchronize do
        inside += 1
        peak = [peak, inside].max
      end
      # Waits for all four to be inside at once (they can only be if four run together).
      TaskerTest.wait_until(timeout: 20) { lock.synchronize { peak == 4 } }
      lock.synchronize { inside -= 1 }
      peak
    end
    assert_equal 4, w.run_until_idle.completed
    assert_equal 4, peak
  end

  def test_other_threads_run_while_the_worker_waits_for_work
    one_step
    w = Tasker::Worker.new(tasker, concurrency: 2, wait_ms: 10_000)
    w.handle("only") { 1 }
    w.start
    ticks = 0
    done = false
    ticker = Thread.new do
      until done
        ticks += 1
        sleep 0.001
      end
    end
    sleep 0.5
    done = true
    ticker.join
    # Both worker threads are waiting in core for work all this time.
    assert_operator ticks, :>, 100
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    w.stop
    assert_operator Process.clock_gettime(Process::CLOCK_MONOTONIC) - started, :<, 5, "stop waited for wait_ms"
  end

  def test_bad_input
    one_step
    assert_raises(TypeError) { Tasker::Worker.new("sqlite://x.db") }
    e = assert_raises(ArgumentError) { Tasker::Worker.new(tasker, concurrency: 0) }
    assert_includes e.message, "concurrency"
    e = assert_raises(TypeError) { Tasker::Worker.new(tasker, concurrency: "8") }
    assert_includes e.message, "concurrency"
    assert_raises(TypeError) { Tasker::Worker.new(tasker, batch_size: 1.5) }
    assert_raises(ArgumentError) { Tasker::Worker.new(tasker, batch_size: 1001) }
    assert_raises(TypeError) { Tasker::Worker.new(tasker, name: 5) }
    w = Tasker::Worker.new(tasker)
    assert_raises(ArgumentError) { w.handle("only") }
    assert_raises(ArgumentError) { w.handle("only", ->(s) { s }) { |s| s } }
    assert_raises(TypeError) { w.handle("only", 42) }
    assert_raises(TypeError) { w.handle("only", String) }
    assert_raises(ArgumentError) { w.handle("only", Class.new(Tasker::StepHandler)) }
    assert_raises(TypeError) { w.handle(:only) { nil } }
    assert_raises(ArgumentError) { w.handle("") { nil } }
    e = assert_raises(ArgumentError) { w.run_until_idle }
    assert_includes e.message, "handler"
    assert_raises(TypeError) { Tasker::RetryableError.new("x", retry_after: "5") }
    assert_raises(ArgumentError) { Tasker::RetryableError.new("x", retry_after: -1) }
    w.handle("only") { nil }
    assert_raises(TypeError) { w.stop(grace: "now") }
    tasker.close
    assert_raises(Tasker::ClosedError) { w.run_until_idle }
    refute w.running?
  end

  def test_a_warning_for_handlers_no_template_names
    one_step
    log = StringIO.new
    Tasker.logger = Logger.new(log)
    w = Tasker::Worker.new(tasker, handlers: { "onyl" => ->(_s) { nil } })
    w.run_until_idle
    assert_includes log.string, "onyl"
  ensure
    Tasker.logger = TaskerTest::QUIET
  end

  def test_step_objects
    one_step("cfg", "steps" => [{ "name" => "cfg", "handler" => "cfg", "config" => { "k" => [1] } }])
    tasker.create_task("t", "cfg", context: { a: 1 })
    got = nil
    Tasker::Worker.new(tasker, handlers: { "cfg" => lambda { |s|
      got = s
      nil
    } }).run_until_idle
    assert_instance_of Tasker::Step, got
    assert_equal [{ "a" => 1 }, { "k" => [1] }, {}], [got.context, got.config, got.results]
    assert_equal %w[cfg cfg], [got.step_name, got.handler]
    assert_equal [1, 3], [got.attempt, got.max_attempts]
    refute got.cancelled?
    assert_match(/cfg/, got.inspect)
    assert_equal got.context, got.to_h["context"]
  end
end

TaskerTest.on_both_stores("Worker", WorkerTests)
