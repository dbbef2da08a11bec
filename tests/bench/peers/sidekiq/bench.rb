# frozen_string_literal: true

# Burns down no-op Sidekiq jobs and prints one JSON line with the rate.
#
#   ruby bench.rb [--jobs 20000] [--concurrency 8] [--redis redis://127.0.0.1:6379/11]
#
# Sidekiq is Debian's ruby-sidekiq (with ruby-redis) on the local Redis; the jobs go to
# a database index of their own (11 by default), emptied before and after. The jobs are
# pushed in bulk before the server starts (not timed); the clock runs from the start
# of Sidekiq's launcher (a Sidekiq server in this process: its manager, fetcher and
# `concurrency` processor threads, as `sidekiq -c N` runs them) until the last job's
# perform returned.

require "json"
require "optparse"
require "sidekiq"
require "sidekiq/launcher"

opts = { jobs: 20_000, concurrency: 8, redis: "redis://127.0.0.1:6379/11" }
OptionParser.new do |o|
  o.on("--jobs N", Integer) { |v| opts[:jobs] = v }
  o.on("--concurrency N", Integer) { |v| opts[:concurrency] = v }
  o.on("--redis URL", String) { |v| opts[:redis] = v }
end.parse!

# redis-rb 4.8 warns on stderr about Sidekiq 6.4's calls (brpop's positional timeout)
# once per fetch: silenced, so the peer is not measured writing warnings.
Redis.silence_deprecations = true
Redis.sadd_returns_boolean = false
Sidekiq.redis = { url: opts[:redis], size: opts[:concurrency] + 5 }
Sidekiq.logger.level = Logger::WARN

# Counts finished jobs and wakes the main thread after the last one.
module Done
  @lock = Mutex.new
  @cond = ConditionVariable.new
  @count = 0
  @target = 0
  @finished_at = nil

  class << self
    attr_reader :finished_at

    def target=(n)
      @target = n
    end

    def tick
      @lock.synchronize do
        @count += 1
        if @count == @target
          @finished_at = Process.clock_gettime(Process::CLOCK_MONOTONIC)
          @cond.broadcast
        end
      end
    end

    def wait(timeout)
      @lock.synchronize { @cond.wait(@lock, timeout) while @finished_at.nil? && Time.now < timeout_at(timeout) }
      @finished_at
    end

    def timeout_at(seconds)
      @timeout_at ||= Time.now + seconds
    end

    def count
      @lock.synchronize { @count }
    end
  end
end

# The no-op job.
class NoopJob
  include Sidekiq::Worker

  def perform(_n)
    Done.tick
  end
end

queue = "tasker_bench"
Sidekiq.redis(&:flushdb)
Done.target = opts[:jobs]
t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
(0...opts[:jobs]).each_slice(1000) do |slice|
  Sidekiq::Client.push_bulk("class" => NoopJob, "queue" => queue, "args" => slice.map { |i| [i] })
end
enqueue_s = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0

options = Sidekiq.options.merge(concurrency: opts[:concurrency], queues: [queue], timeout: 8)
launcher = Sidekiq::Launcher.new(options)
start = Process.clock_gettime(Process::CLOCK_MONOTONIC)
launcher.run
finished = Done.wait(600)
launcher.stop
Sidekiq.redis(&:flushdb)
abort "sidekiq peer: only #{Done.count} of #{opts[:jobs]} jobs ran within 600 s" if finished.nil?

redis_version = Sidekiq.redis { |r| r.info["redis_version"] }
puts JSON.generate(
  "peer_sidekiq_jobs_per_s" => (opts[:jobs] / (finished - start)).round,
  "peer_sidekiq_jobs" => opts[:jobs],
  "peer_sidekiq_concurrency" => opts[:concurrency],
  "peer_sidekiq_enqueue_per_s" => (opts[:jobs] / enqueue_s).round,
  "peer_sidekiq_version" => Sidekiq::VERSION,
  "peer_sidekiq_redis_version" => redis_version
)
