# frozen_string_literal: true

# Scheduling through the gem, on both stores: delayed tasks (run_at/delay_ms), task
# timeouts (timeout_s; step.stop_reason "task_timeout") and cron schedules on a manual
# clock; and Tasker::Testing running delayed tasks and firing schedules on advance.

require_relative "test_helper"
require "tasker/testing"

module SchedulingTests
  def clocked
    @clocked ||= begin
      t = open_tasker(clock: "manual")
      t.register_template(template: TaskerTest.chain("c", [["a", []], ["b", ["a"]]]))
      t
    end
  end

  def advance(ms)
    clocked.call("advance_clock", { "ms" => ms })
  end

  def test_a_delayed_task_waits_for_its_time
    t = clocked
    now = advance(0)["now_ms"]
    at = Time.at(0, now + 90_000, :millisecond).utc
    c = t.create_task("t", "c", run_at: at)
    info = t.get_task(c["task_id"])
    assert_equal true, info["delayed"]
    assert_equal "pending", info["steps"][0]["state"]
    assert_equal [], t.claim(["a"])["steps"]
    assert_equal 90_000, t.call("next_ready_at", {})["in_ms"]
    advance(90_000)
    assert_equal 1, t.claim(["a"])["steps"].size
    assert_raises(Tasker::InvalidArgumentError) { t.create_task("t", "c", run_at: "2030-01-01T00:00:00Z", delay_ms: 5) }
    assert_raises(TypeError) { t.create_task("t", "c", delay_ms: "5") }
    made = t.create_tasks([{ namespace: "t", name: "c", delay_ms: 1000 }, { "namespace" => "t", "name" => "c", "timeout_s" => 9 }])
    states = made.map { |m| t.get_task(m["task_id"])["steps"][0]["state"] }
    assert_equal %w[pending ready], states
  end

  def test_a_task_timeout_stops_the_running_handler
    t = clocked
    c = t.create_task("t", "c", timeout_s: 30)
    assert_equal 30, t.get_task(c["task_id"])["timeout_s"]
    inside = Queue.new
    saw = Queue.new
    w = Tasker::Worker.new(t, lease_ms: 600_000)
    w.handle("a") do |step|
      inside << true
      TaskerTest.wait_until(timeout: 20) { step.cancelled? }
      saw << step.stop_reason
      "late"
    end
    w.start
    Timeout.timeout(20) { inside.pop }
    advance(30_000)
    assert_equal "task_timeout", Timeout.timeout(20) { saw.pop }
    w.stop
    info = t.get_task(c["task_id"])
    assert_equal "error", info["state"]
    assert_equal %w[cancelled cancelled], info["steps"].map { |s| s["state"] }
  end

  def test_a_schedule_fires_once_per_tick_and_bad_ones_are_refused
    t = clocked
    s = t.create_schedule("minutely", "t", "c", cron: "* * * * *", context: { "k" => 1 })
    assert_equal({ "policy" => "skip" }, s["catch_up"])
    3.times { advance(60_000) }
    tasks = t.list_tasks(namespace: "t", name: "c")["tasks"]
    assert_equal 3, tasks.size
    assert_equal 3, tasks.map { |x| x["idempotency_key"] }.uniq.size
    assert_nil t.pause_schedule("minutely")["next_fire_at"]
    advance(600_000)
    assert_equal 3, t.list_tasks["tasks"].size
    refute t.resume_schedule("minutely")["paused"]
    assert_equal ["minutely"], t.list_schedules.map { |x| x["name"] }
    assert_raises(Tasker::ConflictError) { t.create_schedule("minutely", "t", "c", cron: "* * * * *") }
    assert_raises(Tasker::InvalidArgumentError) { t.create_schedule("x", "t", "c", cron: "61 * * * *") }
    assert_raises(Tasker::InvalidArgumentError) { t.create_schedule("x", "t", "c", cron: "* * * * *", timezone: "Nowhere/Land") }
    assert_raises(Tasker::InvalidArgumentError) { t.create_schedule("x", "t", "c", cron: "* * * * *", catch_up: :sometimes) }
    assert_raises(Tasker::NotFoundError) { t.create_schedule("x", "t", "nope", cron: "* * * * *") }
    assert_nil t.delete_schedule("minutely")
    assert_raises(Tasker::NotFoundError) { t.get_schedule("minutely") }
    assert_equal [], t.list_schedules
  end
end

TaskerTest.on_both_stores("Scheduling", SchedulingTests)

class TestSchedulingHarness < Minitest::Test
  def test_the_harness_runs_delayed_tasks_and_fires_schedules_on_advance
    Tasker::Testing.open do |t|
      t.register_template(template: TaskerTest.chain("c", [["a", []]]))
      t.create_task("t", "c", delay_ms: 3_600_000)
      ran = []
      w = Tasker::Worker.new(t)
      w.handle("a") { |_step| ran << t.now; nil }
      assert_equal 1, t.run_until_idle(w).completed
      t.create_schedule("hourly", "t", "c", cron: "0 * * * *")
      t.advance(2 * 3600)
      assert_equal 1, t.run_until_idle(w).completed
      t.advance(3600)
      assert_equal 1, t.run_until_idle(w).completed
      assert_equal 3, ran.size
    end
  end
end
