# frozen_string_literal: true

require "tmpdir"
require "fileutils"
require "tasker"

module Tasker
  # Testing helpers: run workflows in a test without waiting real time.
  #
  #   require "tasker/testing"
  #
  #   Tasker::Testing.open do |t|            # temporary SQLite database, manual clock
  #     t.register_template(yaml: TEMPLATE)
  #     task = t.create_task("shop", "checkout", context: { order: 7 })
  #     worker = Tasker::Worker.new(t)
  #     worker.handle("charge_card") { |step| ... }
  #     t.run_until_idle(worker)            # moves the clock to each retry: no waiting
  #   end                                   # closes and removes the database
  #
  # The engine's clock (the clock: manual setting, docs/configuration.md) starts at the
  # real time and moves only through #advance; retries, backoffs, release delays, lease
  # expiries and step timeouts come due when the test says so. The engine decides; this
  # module drives advance_clock and next_ready_at (docs/api.md).
  module Testing
    # A Tasker::Client on a temporary SQLite database with a manual clock.
    class Harness < Client
      def initialize(handle, dir)
        super(handle)
        @dir = dir
      end

      # The temporary directory holding the database (nil with a database_url of yours).
      attr_reader :dir

      # Closes the client and removes the temporary database.
      def close
        super
        FileUtils.rm_rf(@dir) if @dir
        @dir = nil
      end

      # The engine's time (RFC 3339).
      def now
        call("advance_clock", { "ms" => 0 })["now"]
      end

      # Moves the clock forward by +seconds+ (0 to 30 days) and returns the new time
      # (RFC 3339). Steps whose retry or delay came due are claimable at once; delayed
      # tasks that came due start, task timeouts that passed fire, and cron schedule ticks
      # that came due create their tasks before it returns.
      def advance(seconds)
        unless seconds.is_a?(Numeric) && seconds.real?
          raise TypeError, "seconds must be a number, got #{seconds.class}"
        end

        call("advance_clock", { "ms" => (seconds * 1000).round })["now"]
      end

      # When the next step (of +handlers+) becomes claimable:
      # {"next_ready_at" => time or nil, "in_ms" => Integer or nil, "now" => ..., "clock" => "manual"}.
      def next_ready_at(handlers = nil)
        call("next_ready_at", handlers.nil? ? {} : { "handlers" => handlers })
      end

      # Runs +workers+ until none has anything left, moving the clock to each retry or
      # delay: every worker runs until idle; if a step of their handlers becomes
      # claimable later, the clock moves to it and they run again. Returns the counts
      # summed over workers and rounds (Tasker::WorkerStats).
      def run_until_idle(*workers, max_rounds: 10_000)
        raise ArgumentError, "run_until_idle needs at least one Tasker::Worker" if workers.empty?

        handlers = workers.flat_map(&:handler_names).uniq.sort
        total = WorkerStats.new(completed: 0, failed: 0, lost: 0, released: 0)
        max_rounds.times do
          workers.each do |w|
            got = w.run_until_idle
            total.members.each { |m| total[m] += got[m] }
          end
          due = next_ready_at(handlers)
          return total if due["in_ms"].nil?

          call("advance_clock", { "ms" => due["in_ms"] })
        end
        raise Tasker::Error.build("invalid_state", "workers were still busy after #{max_rounds} rounds")
      end
    end

    module_function

    # Opens a Harness: a fresh SQLite database in a temporary directory (or
    # +database_url+, which no other test may use) on the manual clock; +settings+ are
    # laid over (docs/configuration.md) and +clock+ is always "manual". With a block,
    # yields it, closes it when the block ends and returns the block's value.
    def open(database_url = nil, **settings)
      clock = settings.delete(:clock) || settings.delete("clock")
      raise ArgumentError, "a testing harness runs on the manual clock (leave out clock:)" unless [nil, "manual"].include?(clock)

      dir = nil
      merged = {}
      if database_url.nil?
        dir = Dir.mktmpdir("tasker-test-")
        merged["database_url"] = "sqlite://#{dir}/tasker.db"
        merged["templates_dir"] = dir
      else
        merged["database_url"] = database_url
      end
      settings.each { |k, v| merged[k.to_s] = v }
      merged["clock"] = "manual"
      harness = begin
        Harness.new(Native::Handle.open(Native.to_json(merged, "config")), dir)
      rescue StandardError
        FileUtils.rm_rf(dir) if dir
        raise
      end
      return harness unless block_given?

      begin
        yield harness
      ensure
        harness.close
      end
    end
  end
end
