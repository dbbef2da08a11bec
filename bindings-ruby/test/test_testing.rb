# frozen_string_literal: true

# Tasker::Testing: the harness's manual clock, run_until_idle over retries, clean-up,
# and the documented example kept in step with docs/testing.md.

require_relative "test_helper"
require "tasker/testing"

class TestTesting < Minitest::Test
  ROOT = File.expand_path("../..", __dir__)

  def test_the_documented_example_is_the_one_in_the_docs
    example = File.read(File.join(__dir__, "test_testing_example.rb"))
    body = example.lines.drop(1).join.strip
    assert_includes File.read(File.join(ROOT, "docs", "testing.md")), body
  end

  def test_the_clock_moves_only_when_advanced
    Tasker::Testing.open do |t|
      before = t.now
      sleep 0.02
      assert_equal before, t.now
      later = t.advance(3600)
      assert_operator later, :>, before
      assert_equal({ "next_ready_at" => nil, "in_ms" => nil, "now" => later, "clock" => "manual" }, t.next_ready_at)
      assert_raises(Tasker::InvalidArgumentError) { t.advance(-1) }
      assert_raises(TypeError) { t.advance("soon") }
      assert_equal later, t.now
    end
    assert_raises(ArgumentError) { Tasker::Testing.open(clock: "system") }
  end

  def test_retry_after_waits_for_the_clock_and_the_database_is_removed
    dir = nil
    Tasker::Testing.open do |t|
      dir = t.dir
      assert File.directory?(dir)
      t.register_template(template: { namespace: "t", name: "r", version: "1", steps: [{ name: "a", handler: "a" }] })
      task = t.create_task("t", "r")
      runs = 0
      worker = Tasker::Worker.new(t)
      worker.handle("a") do |step|
        runs += 1
        raise Tasker::RetryableError.new("later", retry_after: 7200) if step.attempt < 3

        "ok"
      end
      assert_equal 1, worker.run_until_idle.failed
      assert_equal 7_200_000, t.next_ready_at(["a"])["in_ms"]
      assert_nil t.next_ready_at(["other"])["in_ms"]
      stats = t.run_until_idle(worker)
      assert_equal [1, 1], [stats.completed, stats.failed]
      assert_equal "complete", t.get_task(task["task_id"])["state"]
      assert_equal 3, runs
    end
    refute File.exist?(dir)
  end

  def test_a_system_clock_client_cannot_be_advanced
    Dir.mktmpdir("tasker-rb-") do |d|
      Tasker.open("sqlite://#{d}/t.db") do |t|
        e = assert_raises(Tasker::InvalidStateError) { t.call("advance_clock", { "ms" => 1000 }) }
        assert_equal({ "clock" => "system" }, e.details)
      end
    end
  end
end
