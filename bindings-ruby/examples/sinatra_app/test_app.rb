# frozen_string_literal: true

# The Sinatra example driven over real HTTP: Puma (Debian's) serves it in cluster mode
# (two forked worker processes, each with its own Tasker::Worker) on a free port, once
# on SQLite and once on PostgreSQL; the test talks to it with Net::HTTP.

require_relative "../../test/test_helper"
require "net/http"
require "socket"
require_relative "app"

class SinatraExampleTest < Minitest::Test
  APP_DIR = __dir__

  def setup
    @dir = Dir.mktmpdir("tasker-rb-app-")
    @schema = nil
  end

  def teardown
    stop_server
    TaskerTest.drop_schema(@schema) if @schema
    FileUtils.rm_rf(@dir)
  end

  def test_the_default_database_is_outside_the_source_tree
    url = Shop.default_database_url
    assert url.start_with?("sqlite://"), url
    db = File.expand_path(url.delete_prefix("sqlite://"))
    assert File.directory?(File.dirname(db))
    repo = File.expand_path("../../..", APP_DIR)
    refute db.start_with?("#{repo}/"), "#{db} is inside the repository"
  end

  def test_orders_over_http_on_sqlite
    exercise({ "TASKER_DATABASE_URL" => "sqlite://#{@dir}/shop.db" })
  end

  def test_orders_over_http_on_postgres
    flunk "TASKER_TEST_DATABASE_URL is not set" if TaskerTest::PG_URL.nil?
    @schema = "rb_app_#{Process.pid}_#{SecureRandom.hex(4)}"
    exercise({ "TASKER_DATABASE_URL" => TaskerTest::PG_URL, "TASKER_POSTGRES_SCHEMA" => @schema })
  end

  private

  def exercise(env)
    start_server(env)

    # An order completes, run by the workers of the forked processes.
    created = post("/orders", { order_id: 7, items: [{ sku: "book", qty: 2, price_cents: 1250 }] })
    assert_equal 201, created.code.to_i, created.body
    task_id = JSON.parse(created.body)["task_id"]
    done = wait_for_state(task_id, "complete")
    assert_equal "complete", done["state"], done.inspect
    assert_equal({ "tracking" => "TRK-7", "charged" => 2500 }, done["steps"]["ship"]["result"])
    assert_equal "EUR", done["steps"]["charge"]["result"]["currency"]
    refute_equal @pid, done["steps"]["charge"]["result"]["pid"], "the step ran in Puma's master, not a worker"

    # The order id is the idempotency key.
    again = post("/orders", { order_id: 7, items: [{ sku: "book", qty: 2 }] })
    assert_equal 200, again.code.to_i
    assert_equal [task_id, false], JSON.parse(again.body).values_at("task_id", "created")

    # Several orders at once, spread over both processes' workers.
    ids = (100..105).map { |n| JSON.parse(post("/orders", { order_id: n, items: [{ sku: "x", qty: 1 }] }).body)["task_id"] }
    ids.each { |id| assert_equal "complete", wait_for_state(id, "complete")["state"] }

    # A handler's PermanentError fails the order for good.
    bad_item = JSON.parse(post("/orders", { order_id: 8, items: [{ sku: " ", qty: 1 }] }).body)["task_id"]
    failed = wait_for_state(bad_item, "error")
    assert_equal "error", failed["steps"]["validate"]["state"]

    # Bad input: 400 with the engine's error code, and nothing created.
    missing = post("/orders", { order_id: 9 })
    assert_equal 400, missing.code.to_i
    err = JSON.parse(missing.body)["error"]
    assert_equal "schema_violation", err["code"]
    refute_empty err["details"]["errors"]
    not_json = post("/orders", "{order: 1", raw: true)
    assert_equal 400, not_json.code.to_i
    assert_equal "invalid_json", JSON.parse(not_json.body)["error"]["code"]
    assert_equal "invalid_argument", JSON.parse(post("/orders", [1]).body)["error"]["code"]
    unknown = get("/orders/999999")
    assert_equal 404, unknown.code.to_i
    assert_equal "not_found", JSON.parse(unknown.body)["error"]["code"]
    assert_equal 404, get("/orders/abc").code.to_i

    # A graceful stop: each process's worker stops, Puma exits cleanly.
    Process.kill("TERM", @pid)
    status = wait_exit(30)
    refute_nil status, "puma did not exit within 30 s of TERM:\n#{log}"
    # Puma 5 ends its graceful shutdown by re-raising TERM on itself.
    assert status.success? || status.termsig == Signal.list["TERM"], "puma exited with #{status.inspect}:\n#{log}"
    assert_includes log, "Goodbye!"
    refute_match(/on_worker_shutdown|stop_worker|Tasker::\w+Error.*stop/, log)
    @pid = nil
  end

  def start_server(env)
    port = TCPServer.open("127.0.0.1", 0) { |s| s.addr[1] }
    @base = URI("http://127.0.0.1:#{port}")
    @log = File.join(@dir, "puma.log")
    full = env.merge("PORT" => port.to_s, "WEB_CONCURRENCY" => "2", "SHOP_WORKER_CONCURRENCY" => "2")
    @pid = Process.spawn(full, "puma", "-C", File.join(APP_DIR, "puma.rb"), chdir: @dir, out: @log, err: @log,
                                                                            pgroup: true)
    up = TaskerTest.wait_until(timeout: 60, interval: 0.1) do
      flunk "puma exited at start:\n#{log}" if Process.waitpid(@pid, Process::WNOHANG)
      begin
        get("/health").code == "200"
      rescue SystemCallError, IOError, Net::ReadTimeout
        false
      end
    end
    flunk "puma did not answer within 60 s:\n#{log}" unless up
  end

  def stop_server
    return if @pid.nil?

    Process.kill("TERM", @pid)
    return if wait_exit(20)

    Process.kill("KILL", -@pid)
    Process.wait(@pid)
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  ensure
    @pid = nil
  end

  def wait_exit(seconds)
    TaskerTest.wait_until(timeout: seconds, interval: 0.05) do
      _, status = Process.waitpid2(@pid, Process::WNOHANG)
      status
    end
  end

  def log
    File.exist?(@log) ? File.read(@log) : ""
  end

  def http
    Net::HTTP.start(@base.host, @base.port, open_timeout: 5, read_timeout: 30) { |h| yield h }
  end

  def get(path)
    http { |h| h.get(path) }
  end

  def post(path, body, raw: false)
    http { |h| h.post(path, raw ? body : JSON.generate(body), "Content-Type" => "application/json") }
  end

  def wait_for_state(task_id, state)
    last = nil
    TaskerTest.wait_until(timeout: 30, interval: 0.05) do
      last = JSON.parse(get("/orders/#{task_id}").body)
      last["state"] == state
    end
    last
  end
end
