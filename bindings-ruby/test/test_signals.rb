# frozen_string_literal: true

require_relative "test_helper"

# Signals from Ruby, on both stores: a step with wait_for waits until
# Tasker::Client#send_signal; its payload is the step's result for the next handler;
# bad signals raise the matching errors and change nothing.
module SignalTests
  include TaskerTest

  APPROVAL = {
    "namespace" => "t", "name" => "approval", "version" => "1",
    "steps" => [
      { "name" => "fetch", "handler" => "fetch" },
      { "name" => "approve", "depends_on" => ["fetch"], "wait_for" => { "signal" => "approved", "timeout_s" => 60 } },
      { "name" => "ship", "handler" => "ship", "depends_on" => ["approve"] }
    ]
  }.freeze

  def worker(seen)
    w = Tasker::Worker.new(tasker)
    w.handle("fetch") { |step| step.context["order"] }
    w.handle("ship") do |step|
      seen << step.results["approve"]
      "shipped"
    end
    w
  end

  def test_send_signal_releases_the_waiting_step_with_its_payload
    tasker.register_template(APPROVAL)
    task_id = tasker.create_task("t", "approval", context: { order: 7 })["task_id"]
    seen = []
    worker(seen).run_until_idle
    approve = tasker.get_task(task_id)["steps"].find { |s| s["name"] == "approve" }
    assert_equal "waiting", approve["state"]
    assert_kind_of String, approve["wait_until"]
    out = tasker.send_signal(task_id, "approved", payload: { "by" => "ada" })
    assert_equal [{ "step_id" => approve["id"], "step_name" => "approve", "state" => "complete" }], out["steps"]
    worker(seen).run_until_idle
    assert_equal [{ "by" => "ada" }], seen
    assert_equal "complete", tasker.get_task(task_id)["state"]
    names = all_events(tasker, task_id: task_id).map { |e| e["event"] }
    assert_includes names, "step.waiting"
    assert_includes names, "step.signalled"
    assert_raises(Tasker::InvalidStateError) { tasker.send_signal(task_id, "approved") }
  end

  def test_an_early_signal_is_kept_and_bad_signals_raise_and_change_nothing
    tasker.register_template(APPROVAL)
    task_id = tasker.create_task("t", "approval")["task_id"]
    assert_equal "pending", tasker.send_signal(task_id, "approved", payload: "early")["steps"][0]["state"]
    before = fingerprint(tasker)
    assert_raises(Tasker::ConflictError) { tasker.send_signal(task_id, "approved", payload: 2) }
    e = assert_raises(Tasker::NotFoundError) { tasker.send_signal(task_id, "aproved") }
    assert_includes e.message, "did you mean `approved`"
    assert_raises(Tasker::NotFoundError) { tasker.send_signal(999_999, "approved") }
    assert_raises(Tasker::InvalidArgumentError) { tasker.send_signal(task_id, "not a name") }
    assert_raises(TypeError) { tasker.send_signal(task_id, :approved) }
    assert_equal before, fingerprint(tasker)
    seen = []
    worker(seen).run_until_idle
    assert_equal ["early"], seen
  end
end

TaskerTest.on_both_stores("Signal", SignalTests)
