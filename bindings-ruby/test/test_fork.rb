# frozen_string_literal: true

require_relative "test_helper"

# A real fork (what Puma, Unicorn and preforking job runners do): the parent has an open
# client, a running worker and an event subscription; the child inherits the objects.
# Both then create and run tasks on the same database. The child gets its own engine on
# its first call; the parent's worker, subscription and handle are untouched, and the
# child sees none of them running.
module ForkTests
  include TaskerTest

  PAIR = TaskerTest.chain("pair", [["a", []], ["b", ["a"]]])

  def handlers
    {
      "a" => ->(_s) { { "pid" => Process.pid } },
      "b" => ->(s) { { "pid" => Process.pid, "a_pid" => s.results["a"]["pid"] } }
    }
  end

  def complete?(t, ids)
    ids.all? { |id| t.get_task(id)["state"] == "complete" }
  end

  def test_parent_and_child_both_create_and_run_tasks
    t = tasker
    t.register_template(PAIR)
    completed = Queue.new
    sub = t.on("task.completed") { |e| completed << e["task_id"] }
    parent_worker = Tasker::Worker.new(t, concurrency: 2, name: "parent-#{Process.pid}", handlers: handlers)
    parent_worker.start
    before = t.create_task("t", "pair", context: { who: "parent" })["task_id"]
    assert TaskerTest.wait_until(timeout: 20) { complete?(t, [before]) }

    rd, wr = IO.pipe
    child = fork do
      rd.close
      report = {}
      begin
        # Inherited objects: nothing of the parent's runs here.
        report["worker_running"] = parent_worker.running?
        report["subscription_active"] = sub.active?
        # The inherited client works: the child's first call opens its own engine.
        report["ping"] = t.ping["ok"]
        ids = Array.new(4) { t.create_task("t", "pair", context: { who: "child" })["task_id"] }
        w = Tasker::Worker.new(t, concurrency: 2, name: "child-#{Process.pid}", handlers: handlers)
        w.run_until_idle
        # The parent's worker may have taken some of them; all complete either way.
        report["complete"] = TaskerTest.wait_until(timeout: 20) { complete?(t, ids) } ? true : false
        report["ids"] = ids
        # The inherited worker starts afresh in the child, with a session of its own.
        parent_worker.start
        report["restarted"] = parent_worker.running?
        report["stopped_stats"] = parent_worker.stop.to_h
        # Closing in the child must not close anything of the parent's.
        t.close
        report["ok"] = true
      rescue Exception => e # rubocop:disable Lint/RescueException
        report["error"] = "#{e.class}: #{e.message}\n#{e.backtrace&.first(8)&.join("\n")}"
      end
      wr.write(JSON.generate(report))
      wr.close
      exit!(0)
    end
    wr.close
    # The parent keeps working while the child runs.
    mine = Array.new(4) { t.create_task("t", "pair", context: { who: "parent" })["task_id"] }
    report = JSON.parse(rd.read)
    rd.close
    _, status = Process.wait2(child)
    assert status.success?, "child exited with #{status.inspect}"
    assert report["ok"], report["error"]
    assert_equal [false, false, true], report.values_at("worker_running", "subscription_active", "ping")
    assert report["complete"], "the child's tasks did not complete"
    assert report["restarted"]

    # The parent is unaffected: its handle, worker and subscription still work.
    refute t.closed?
    assert parent_worker.running?
    assert sub.active?
    assert TaskerTest.wait_until(timeout: 20) { complete?(t, mine + report["ids"]) }
    later = t.create_task("t", "pair")["task_id"]
    assert TaskerTest.wait_until(timeout: 20) { complete?(t, [later]) }
    stats = parent_worker.stop
    # The child's worker may have run some of the parent's tasks too (one database);
    # the task created after the child exited is the parent's own.
    assert_operator stats.completed, :>=, 2

    # Every step ran exactly once, in the process whose worker claimed it.
    done = TaskerTest.all_events(t, types: ["step.completed"])
    assert_equal 2 * (1 + mine.size + report["ids"].size + 1), done.size
    done.each do |e|
      result = t.get_task(e["task_id"])["steps"].find { |s| s["id"] == e["step_id"] }["result"]
      assert_equal e["worker"], "#{e['worker'].split('-').first}-#{result['pid']}", e.inspect
    end
    runners = done.map { |e| e["worker"].split("-").first }.uniq.sort
    assert_includes runners, "parent"
    # The subscription, in the parent, saw the tasks of both processes complete.
    seen = []
    TaskerTest.wait_until(timeout: 10) do
      seen << completed.pop until completed.empty?
      (report["ids"] - seen).empty?
    end
    assert_empty report["ids"] - seen
  end

  def test_a_client_opened_in_the_parent_only_is_usable_in_many_children
    t = tasker
    t.register_template(PAIR)
    children = Array.new(3) do |i|
      fork do
        ok = begin
          id = t.create_task("t", "pair", context: { child: i })["task_id"]
          Tasker::Worker.new(t, handlers: handlers).run_until_idle
          # Another child may be running it still.
          TaskerTest.wait_until(timeout: 20) { t.get_task(id)["state"] == "complete" } ? true : false
        rescue Exception # rubocop:disable Lint/RescueException
          false
        end
        exit!(ok ? 0 : 1)
      end
    end
    statuses = children.map { |pid| Process.wait2(pid)[1] }
    assert statuses.all?(&:success?), statuses.inspect
    assert_equal 3, t.list_tasks(state: "complete")["tasks"].size
    assert_equal 3, t.stats["tasks"]["complete"]
  end
end

TaskerTest.on_both_stores("Fork", ForkTests)
