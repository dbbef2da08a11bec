# frozen_string_literal: true

require_relative "test_helper"

# Child tasks from Ruby, on both stores: a handler starts child tasks with
# step.start_child and returns Tasker.wait_for_children; the same worker runs the
# children, and the parent step completes with their results in start order.
module ChildrenTests
  include TaskerTest

  RETRY = { "max_attempts" => 2, "base_ms" => 1, "max_ms" => 5, "jitter" => 0 }.freeze
  FAMILY = {
    "namespace" => "t", "name" => "family", "version" => "1", "defaults" => { "retry" => RETRY },
    "steps" => [
      { "name" => "spawn", "handler" => "spawn" },
      { "name" => "after", "handler" => "after", "depends_on" => ["spawn"] }
    ]
  }.freeze
  KID = {
    "namespace" => "t", "name" => "kid", "version" => "1", "defaults" => { "retry" => RETRY },
    "steps" => [{ "name" => "work", "handler" => "work" }]
  }.freeze

  def test_a_handler_starts_children_waits_for_them_and_its_step_gets_their_results
    tasker.register_template(FAMILY)
    tasker.register_template(KID)
    task_id = tasker.create_task("t", "family", context: { n: 3 })["task_id"]
    started = []
    w = Tasker::Worker.new(tasker, concurrency: 2)
    w.handle("spawn") do |step|
      step.context["n"].times do |i|
        started << step.start_child(namespace: "t", name: "kid", key: "kid-#{i}", context: { "i" => i })
      end
      # The same key again: the same task.
      again = step.start_child(namespace: "t", name: "kid", key: "kid-0", context: { "i" => 0 })
      raise "a repeated start made another task" unless again == started[0]

      Tasker.wait_for_children
    end
    w.handle("work") { |step| step.context["i"] * 10 }
    w.handle("after") { |step| step.results["spawn"]["children"].map { |c| c["results"]["work"] } }
    w.run_until_idle
    task = tasker.get_task(task_id)
    assert_equal "complete", task["state"]
    spawn = task["steps"].find { |s| s["name"] == "spawn" }
    assert_equal started, spawn["children"]
    assert_equal %w[kid-0 kid-1 kid-2], spawn["result"]["children"].map { |c| c["key"] }
    assert_equal [0, 10, 20], task["steps"].find { |s| s["name"] == "after" }["result"]
    parent = tasker.get_task(started[1])["parent"]
    assert_equal({ "task_id" => task_id, "step_id" => spawn["id"], "step_name" => "spawn" }, parent)
  end

  def test_start_child_outside_a_worker_is_refused
    step = Tasker::Step.from_h(step_id: 1, task_id: 1, step_name: "spawn")
    assert_raises(ArgumentError) { step.start_child(namespace: "t", name: "kid", key: "k") }
  end
end

TaskerTest.on_both_stores("Children", ChildrenTests)
