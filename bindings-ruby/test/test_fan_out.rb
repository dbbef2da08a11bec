# frozen_string_literal: true

require_relative "test_helper"

# Dynamic fan-out from Ruby, on both stores: a fan_out step runs its handler once per
# item of a parent's list (the item and index in step.config["fan_out"]), and the join
# gets every result in item order.
module FanOutTests
  include TaskerTest

  FAN = {
    "namespace" => "t", "name" => "fan", "version" => "1",
    "defaults" => { "retry" => { "max_attempts" => 2, "base_ms" => 1, "max_ms" => 5, "jitter" => 0 } },
    "steps" => [
      { "name" => "split", "handler" => "split" },
      { "name" => "square", "handler" => "square", "depends_on" => ["split"],
        "fan_out" => { "items" => "$results.split.numbers", "max_items" => 50 } },
      { "name" => "total", "handler" => "total", "depends_on" => ["square"] }
    ]
  }.freeze

  def run_worker(seen = [])
    w = Tasker::Worker.new(tasker, concurrency: 3)
    w.handle("split") { |step| { "numbers" => (0...step.context["n"]).to_a } }
    w.handle("square") do |step|
      fo = step.config["fan_out"]
      seen << [step.step_name, fo["index"], fo["count"]]
      fo["item"] * fo["item"]
    end
    w.handle("total") { |step| step.results["square"] }
    w.run_until_idle
  end

  def test_one_instance_per_item_and_the_join_gets_the_results_in_item_order
    tasker.register_template(FAN)
    task_id = tasker.create_task("t", "fan", context: { n: 5 })["task_id"]
    seen = []
    run_worker(seen)
    task = tasker.get_task(task_id)
    assert_equal "complete", task["state"]
    assert_equal 8, task["steps_total"]
    assert_equal [0, 1, 4, 9, 16], task["steps"].find { |s| s["name"] == "total" }["result"]
    assert_equal((0...5).map { |i| ["square[#{i}]", i, 5] }, seen.sort)
  end

  def test_a_list_over_the_bound_fails_the_step_permanently
    tasker.register_template(FAN)
    task_id = tasker.create_task("t", "fan", context: { n: 51 })["task_id"]
    run_worker
    task = tasker.get_task(task_id)
    assert_equal "error", task["state"]
    square = task["steps"].find { |s| s["name"] == "square" }
    assert_equal "fan_out_too_large", square["error"]["kind"]
    assert_equal false, square["error"]["retryable"]
  end
end

TaskerTest.on_both_stores("FanOut", FanOutTests)
