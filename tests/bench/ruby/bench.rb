# frozen_string_literal: true

# The Ruby gem's numbers: per-call cost and a worker of no-op Ruby handlers.
#
#   ruby bench.rb [--quick] [--sync normal|full] [--pg-url URL] [--concurrency N] [--batch-size N]
#
# Run by scripts/bench-ruby with a release build of the gem installed in
# target/bench/ruby-gems. Prints one JSON object of named numbers on stdout (progress on
# stderr):
#
# - ffi_noop_call_ns_ruby: median over rounds of the mean ns per
#   Client#call_json("ping", "{}") (the call the C, Rust and Python numbers make);
#   ffi_noop_call_ns_ruby_ping the same for Client#ping (Hash out).
# - steps_per_s_ruby_sqlite / _postgres: single-step tasks created beforehand (not
#   timed, as in the Rust bench), drained by one Tasker::Worker of no-op handlers in this
#   process with run_until_idle, as an application would; the clock covers the whole
#   call. The worker's settings are recorded beside the numbers.
#
# The engine opens the way the Rust bench opens it: a fresh SQLite file (WAL,
# sqlite_synchronous as given) or a fresh PostgreSQL schema, dropped after.

require "json"
require "optparse"
require "securerandom"
require "tmpdir"
require "fileutils"
require "tasker"

opts = { quick: false, sync: "normal", pg_url: nil, concurrency: 8, batch_size: 64 }
OptionParser.new do |o|
  o.on("--quick") { opts[:quick] = true }
  o.on("--sync MODE", String) { |v| opts[:sync] = v }
  o.on("--pg-url URL", String) { |v| opts[:pg_url] = v }
  o.on("--concurrency N", Integer) { |v| opts[:concurrency] = v }
  o.on("--batch-size N", Integer) { |v| opts[:batch_size] = v }
end.parse!

TEMPLATE = { namespace: "bench", name: "single", version: "1.0.0", steps: [{ name: "only", handler: "noop" }] }.freeze
CREATE = JSON.generate({ namespace: "bench", name: "single", version: "1.0.0", context: { n: 1 } })

def say(msg)
  warn msg
end

def clock
  Process.clock_gettime(Process::CLOCK_MONOTONIC)
end

def clock_ns
  Process.clock_gettime(Process::CLOCK_MONOTONIC, :nanosecond)
end

def median(values)
  s = values.sort
  s.size.odd? ? s[s.size / 2] : (s[s.size / 2 - 1] + s[s.size / 2]) / 2.0
end

# Per-call cost of the cheapest operation, through the gem's public API.
def ffi(out, db, sync, calls, batch)
  Tasker.open({ database_url: "sqlite://#{db}", sqlite_synchronous: sync }) do |t|
    [["ffi_noop_call_ns_ruby", -> { t.call_json("ping", "{}") }], ["ffi_noop_call_ns_ruby_ping", -> { t.ping }]]
      .each do |key, fn|
      2_000.times { fn.call }
      means = Array.new(calls / batch) do
        start = clock_ns
        batch.times { fn.call }
        (clock_ns - start).to_f / batch
      end
      out[key] = median(means).round(1)
      say format("  %s: %.0f ns/call (median of %d rounds of %d)", key, out[key], means.size, batch)
    end
  end
  out["ffi_noop_calls_ruby"] = calls
end

# Creates n single-step tasks on +threads+ threads (every engine call releases the GVL,
# so on PostgreSQL the threads' round trips overlap).
def create_many(t, n, threads)
  counts = Array.new(threads) { |i| n / threads + (i < n % threads ? 1 : 0) }
  counts.map { |c| Thread.new { c.times { t.call_json("create_task", CREATE) } } }.each(&:join)
end

# A Worker of no-op handlers drains n single-step tasks.
def steps(out, store, config, n, concurrency, batch_size)
  Tasker.open(config) do |t|
    t.register_template(TEMPLATE)
    threads = store == "sqlite" ? 1 : 4
    start = clock
    create_many(t, n, threads)
    create_s = clock - start

    worker = Tasker::Worker.new(t, concurrency: concurrency, batch_size: batch_size)
    worker.handle("noop") { |_step| nil }
    start = clock
    stats = worker.run_until_idle
    drain_s = clock - start

    complete = t.stats["tasks"]["complete"]
    if stats.completed != n || complete != n
      abort "ruby bench (#{store}): worker completed #{stats.completed}, #{complete} of #{n} tasks complete (#{stats})"
    end
    rate = n / drain_s
    out["steps_per_s_ruby_#{store}"] = rate.round
    out["steps_ruby_tasks_#{store}"] = n
    out["steps_ruby_concurrency_#{store}"] = concurrency
    out["steps_ruby_batch_size_#{store}"] = batch_size
    out["create_tasks_per_s_ruby_#{store}"] = (n / create_s).round
    say format("  steps (ruby, %s): %.0f steps/s drained by Worker(concurrency: %d, batch_size: %d) " \
               "(%d tasks, created at %.0f/s on %d threads)", store, rate, concurrency, batch_size, n, n / create_s,
               threads)
  end
end

def drop_schema(url, schema)
  require "pg"
  conn = PG.connect(url)
  conn.exec("SET client_min_messages = warning")
  conn.exec(%(DROP SCHEMA IF EXISTS "#{schema}" CASCADE))
ensure
  conn&.close
end

out = { "ruby_version" => RUBY_VERSION, "ruby_gem_version" => Tasker::VERSION }
calls, batch = opts[:quick] ? [50_000, 5_000] : [200_000, 10_000]
n = opts[:quick] ? 5_000 : 20_000
scratch = Dir.mktmpdir("tasker-bench-rb-")
begin
  say "ruby (ffi):"
  ffi(out, File.join(scratch, "ffi.db"), opts[:sync], calls, batch)
  say "ruby (steps):"
  cfg = { database_url: "sqlite://#{File.join(scratch, 'steps.db')}", sqlite_synchronous: opts[:sync] }
  steps(out, "sqlite", cfg, n, opts[:concurrency], opts[:batch_size])
ensure
  FileUtils.rm_rf(scratch)
end
if opts[:pg_url]
  schema = "tasker_bench_rb_#{Process.pid}_#{SecureRandom.hex(4)}"
  begin
    steps(out, "postgres", { database_url: opts[:pg_url], postgres_schema: schema }, n, opts[:concurrency],
          opts[:batch_size])
  ensure
    drop_schema(opts[:pg_url], schema)
  end
end
puts JSON.generate(out)
