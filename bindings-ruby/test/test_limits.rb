# frozen_string_literal: true

require_relative "test_helper"

# Concurrency and rate limits (docs/scheduling.md) through the gem, on both stores: a
# template with limits is accepted, the Worker never runs more than `max` steps of a
# key at once (counted inside the handlers), explain_task says why a step waits, and
# bad limits are refused.
module LimitsTests
  include TaskerTest

  def limited(name, step)
    { "namespace" => "t", "name" => name, "version" => "1",
      "steps" => [{ "name" => "work", "handler" => "work" }.merge(step)] }
  end

  def test_a_concurrency_key_from_the_context_caps_running_steps_per_key
    tasker.register_template(limited("conc", "concurrency" => { "key" => "$context.k", "max" => 1 }))
    8.times { |i| tasker.create_task("t", "conc", context: { k: i % 2 }) }
    lock = Mutex.new
    now = Hash.new(0)
    most = Hash.new(0)
    worker = Tasker::Worker.new(tasker, concurrency: 4, batch_size: 1)
    worker.handle("work") do |step|
      k = step.context["k"]
      lock.synchronize do
        now[k] += 1
        most[k] = [most[k], now[k]].max
      end
      sleep 0.015
      lock.synchronize { now[k] -= 1 }
      k
    end
    stats = worker.run_until_idle
    assert_equal 8, stats.completed
    assert_equal({ 0 => 1, 1 => 1 }, most)
  end

  def test_explain_task_says_a_ready_step_is_held_by_its_limit
    tasker.register_template(limited("held", "concurrency" => { "key" => "shared", "max" => 1 }))
    a = tasker.create_task("t", "held")["task_id"]
    b = tasker.create_task("t", "held")["task_id"]
    got = tasker.call("claim", { "handlers" => ["work"], "limit" => 5, "worker_id" => "ruby" })["steps"]
    assert_equal 1, got.size
    waiting = got[0]["task_id"] == a ? b : a
    why = tasker.explain_task(waiting)["steps"][0]
    assert_equal "held_by_limit", why["status"]
    assert_match(/concurrency key `global:shared` has 1 of 1 running/, why["reason"])
    assert_equal({ "key" => "global:shared", "running" => 1, "max" => 1 }, why["limits"]["concurrency"])
  end

  def test_bad_limits_are_refused
    e = assert_raises(Tasker::InvalidTemplateError) do
      tasker.register_template(limited("bad", "rate_limit" => { "limit" => 0, "per_ms" => 10 }))
    end
    assert_equal "bad_rate_limit", e.details["problem"]
    tasker.register_template(limited("ctx", "concurrency" => { "key" => "$context.account", "max" => 1 }))
    e = assert_raises(Tasker::InvalidArgumentError) { tasker.create_task("t", "ctx", context: {}) }
    assert_equal "context.account", e.details["field"]
  end
end

TaskerTest.on_both_stores("Limits", LimitsTests)
