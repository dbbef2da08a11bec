# frozen_string_literal: true

# Shared set-up for the gem's minitest suite. The suite runs against the *installed*
# gem (scripts/ruby-tests installs it into a scratch GEM_HOME), never the source tree.
#
# Every test module is included twice: once in a class running on a fresh SQLite file
# in the test's temporary directory, once on PostgreSQL (TASKER_TEST_DATABASE_URL) in a
# schema of its own, dropped after the test. Without the URL the PostgreSQL classes skip.

require "minitest/autorun"
require "json"
require "securerandom"
require "tmpdir"
require "fileutils"
require "stringio"
require "timeout"
require "tasker"

loaded = $LOADED_FEATURES.grep(%r{/tasker/tasker_native\.}).first.to_s
spec = Gem.loaded_specs["tasker"]
if spec.nil? || loaded.include?("/bindings-ruby/lib/") ||
   (ENV["GEM_HOME"] && !loaded.start_with?(File.expand_path(ENV["GEM_HOME"])))
  abort "test_helper: `tasker` must be the gem installed in GEM_HOME (#{ENV['GEM_HOME'].inspect}), " \
        "but it was loaded from #{loaded.inspect}"
end

module TaskerTest
  # The engine's log lines (failed attempts the tests cause on purpose) stay out of the
  # test output; tests that look at them set a logger of their own.
  QUIET = Logger.new(File::NULL)
  Tasker.logger = QUIET

  PG_URL = ENV["TASKER_TEST_DATABASE_URL"].to_s.empty? ? nil : ENV["TASKER_TEST_DATABASE_URL"]

  module_function

  def drop_schema(schema)
    require "pg"
    conn = PG.connect(PG_URL)
    conn.exec("SET client_min_messages = warning")
    conn.exec(%(DROP SCHEMA IF EXISTS "#{schema}" CASCADE))
  ensure
    conn&.close
  end

  # A template in namespace "t": +steps+ are [name, [parents]] pairs, the handler named
  # like the step; fast retries unless +extra+ says otherwise.
  def chain(name, steps, **extra)
    {
      "namespace" => "t", "name" => name, "version" => "1",
      "defaults" => { "retry" => { "max_attempts" => 3, "base_ms" => 1, "max_ms" => 5, "jitter" => 0 } },
      "steps" => steps.map { |s, deps| { "name" => s, "handler" => s, "depends_on" => deps } }
    }.merge(extra.transform_keys(&:to_s))
  end

  # Counts of tasks, steps and events: equal before and after a refused request means
  # the request stored nothing.
  def fingerprint(tasker)
    s = tasker.stats
    { "tasks" => s["tasks"], "steps" => s["steps"], "last_event_id" => s["last_event_id"] }
  end

  # Every event matching +filters+, read page by page to the end.
  def all_events(tasker, **filters)
    out = []
    cursor = 0
    loop do
      page = tasker.events(cursor, limit: 1000, **filters)
      out.concat(page["events"])
      return out if page["next_cursor"] == cursor

      cursor = page["next_cursor"]
    end
  end

  def wait_until(timeout: 10, interval: 0.01)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    loop do
      value = yield
      return value if value
      return nil if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

      sleep interval
    end
  end

  # Per-store set-up, mixed into the test classes by TaskerTest.on_both_stores.
  module Store
    def setup
      super
      @dir = Dir.mktmpdir("tasker-rb-")
      @schemas = []
    end

    def teardown
      @opened&.each { |t| t.close unless t.closed? }
      @schemas.each { |s| TaskerTest.drop_schema(s) }
      FileUtils.rm_rf(@dir)
      super
    end

    # Settings for a fresh database on this class's store (another call: another
    # database).
    def settings(**extra)
      base = { "templates_dir" => File.join(@dir, "templates"), "env" => "test" }
      if store == :sqlite
        base["database_url"] = "sqlite://#{@dir}/tasker-#{SecureRandom.hex(4)}.db"
      else
        if TaskerTest::PG_URL.nil?
          flunk "TASKER_TEST_DATABASE_URL is not set" if ENV["TASKER_TEST_REQUIRE_PG"] == "1"
          skip "TASKER_TEST_DATABASE_URL is not set"
        end
        schema = "rb_#{Process.pid}_#{SecureRandom.hex(5)}"
        @schemas << schema
        base.merge!("database_url" => TaskerTest::PG_URL, "postgres_schema" => schema, "postgres_pool_size" => 4)
      end
      base.merge(extra.transform_keys(&:to_s))
    end

    # An open client on a fresh database, closed after the test.
    def open_tasker(**extra)
      t = Tasker.open(settings(**extra))
      (@opened ||= []) << t
      t
    end

    def tasker
      @tasker ||= open_tasker
    end
  end

  # Defines <Name>SqliteTest and <Name>PostgresTest running the tests of +mod+.
  def on_both_stores(name, mod)
    { sqlite: "Sqlite", postgres: "Postgres" }.each do |store, suffix|
      klass = Class.new(Minitest::Test) do
        include Store
        include mod
        define_method(:store) { store }
      end
      Object.const_set("#{name}#{suffix}Test", klass)
    end
  end
end
