# frozen_string_literal: true

# The Ruby worker of the polyglot tests (tests/polyglot/README.md): serves the handler
# named by POLY_HANDLER (default "ruby") and does what each step's config "do" says.
# Works until SIGTERM.
require "json"
require "tasker"

LANG = "ruby"
LOG = ENV.fetch("POLY_LOG")

def log(step, event)
  line = { lang: LANG, pid: Process.pid, task_id: step.task_id, step: step.step_name, attempt: step.attempt,
           event: event }
  File.open(LOG, "a") { |f| f.write("#{JSON.generate(line)}\n") }
end

handler = lambda do |step|
  cfg = step.config || {}
  log(step, "start")
  out =
    case cfg.fetch("do", "emit")
    when "emit" then { language: LANG, value: cfg["value"] }
    when "echo" then { language: LANG, parents: step.results }
    when "sleep"
      sleep(cfg["ms"] / 1000.0)
      { language: LANG, pid: Process.pid }
    when "flaky"
      if step.attempt < cfg["succeed_on"]
        log(step, "fail")
        raise Tasker::RetryableError.new("attempt #{step.attempt} fails", retry_after: 0.01)
      end
      { language: LANG, attempt: step.attempt }
    when "permanent"
      log(step, "fail")
      raise Tasker::PermanentError, cfg["message"]
    else raise Tasker::PermanentError, "unknown action #{cfg['do']}"
    end
  log(step, "end")
  out
end

lease = ENV.fetch("POLY_LEASE_MS", nil)
Tasker.open(JSON.parse(ENV.fetch("POLY_SETTINGS"))) do |t|
  worker = Tasker::Worker.new(t, concurrency: 4, name: "#{LANG}-#{Process.pid}", lease_ms: lease&.to_i)
  worker.handle(ENV.fetch("POLY_HANDLER", LANG), handler)
  worker.start
  stop = Queue.new
  Signal.trap("TERM") { stop << true }
  stop.pop
  worker.stop
end
