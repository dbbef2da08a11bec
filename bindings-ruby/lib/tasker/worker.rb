# frozen_string_literal: true

module Tasker
  # Runs Ruby handlers for the steps of Tasker tasks.
  #
  #   worker = Tasker::Worker.new(tasker, concurrency: 8)
  #   worker.handle("validate_order") { |step| { "valid" => true } }
  #   worker.handle(ChargeCard)                 # a Tasker::StepHandler subclass
  #   worker.run_until_idle                     # or worker.start ... worker.stop
  #
  # A Worker drives one of core's worker sessions (docs/workers.md): core claims the
  # steps, keeps their leases alive, retries, times out and releases; this class only
  # runs handlers. Each of +concurrency+ threads loops: take a batch of steps from the
  # session, run their handlers one after another, report every outcome in one call
  # that also takes the next batch. One more thread waits for the session's stop
  # signals while the others are busy in handlers (Step#cancelled?). The GVL is
  # released during every engine call and every wait, so other Ruby threads run
  # meanwhile.
  #
  # A handler gets a Tasker::Step and returns the step's result (JSON data). Raising
  # Tasker::PermanentError fails the step for good; Tasker::RetryableError asks for a
  # retry (+retry_after+ seconds); any other exception, StandardError or not, is a
  # retryable failure recorded with its class, message and backtrace, and the worker
  # goes on. (+exit+ or a signal inside a handler is recorded the same way, then stops
  # the worker and is raised again from #run_until_idle or #stop.) A result that is not
  # JSON data fails only that step, for good, with the reason.
  class Worker
    # Seconds #stop waits for running handlers by default.
    DEFAULT_GRACE = 5
    # A batch whose handlers took longer than this per step makes the thread take one
    # step at a time (steps waiting in a batch count against their timeout).
    SLOW_STEP_S = 0.005

    # The client the worker runs on, and its settings.
    attr_reader :tasker, :concurrency, :batch_size, :lease_ms, :name
    # The session id while running (nil otherwise).
    attr_reader :worker_id

    # +tasker+: an open Tasker::Client. +concurrency+: handlers running at once (one
    # thread each). +batch_size+: the most steps a thread takes at once (1-1000): large
    # batches are fastest for short handlers, and a thread whose handlers are slow takes
    # one at a time. +lease_ms+ and +name+ are passed to the session (defaults: the
    # engine's lease, "worker-<pid>").
    # +idle_wait_ms+: how long #run_until_idle waits for work before asking whether the
    # session is idle; +wait_ms+: how long a thread of #start waits for work per call
    # (#stop ends the wait at once). +handlers+: name => callable, as if given to #handle.
    def initialize(tasker, concurrency: 1, batch_size: 64, lease_ms: nil, name: nil, idle_wait_ms: 50,
                   wait_ms: 10_000, handlers: {})
      raise TypeError, "Worker.new needs a Tasker::Client (from Tasker.open), got #{Types.describe(tasker)}" \
        unless tasker.is_a?(Client)

      Types.positive_integer!("concurrency", concurrency)
      Types.positive_integer!("batch_size", batch_size)
      raise ArgumentError, "batch_size must be at most 1000, got #{batch_size}" if batch_size > 1000
      Types.positive_integer!("lease_ms", lease_ms, allow_nil: true)
      Types.string!("name", name, allow_nil: true)
      Types.integer!("idle_wait_ms", idle_wait_ms)
      Types.positive_integer!("wait_ms", wait_ms)
      Types.hash!("handlers", handlers)
      @tasker = tasker
      @concurrency = concurrency
      @batch_size = batch_size
      @lease_ms = lease_ms
      @name = name
      @idle_wait_ms = idle_wait_ms
      @wait_ms = wait_ms
      @handlers = {}
      @lock = Mutex.new
      @held = {}
      @lanes = []
      @tokens = []
      @worker_id = nil
      @pid = nil
      @last_stats = WorkerStats.new(completed: 0, failed: 0, lost: 0, released: 0)
      handlers.each { |n, h| handle(n.to_s, h) }
    end

    # Registers a handler for steps whose template names +name+:
    #
    #   worker.handle("charge") { |step| ... }         # a block
    #   worker.handle("charge", ChargeCard)            # a StepHandler subclass
    #   worker.handle(ChargeCard)                      # named by ChargeCard.handler_name
    #   worker.handle("charge", ->(step) { ... })      # anything that responds to call
    #
    # Returns self.
    def handle(name = nil, handler = nil, &block)
      if name.is_a?(Class) && handler.nil? && block.nil?
        handler = name
        name = nil
      end
      raise ArgumentError, "give a handler or a block, not both" if handler && block

      handler ||= block
      raise ArgumentError, "handle needs a handler: a block, a StepHandler subclass or a callable" if handler.nil?

      if handler.is_a?(Class)
        unless handler <= StepHandler
          raise TypeError, "handler class #{handler} must be a subclass of Tasker::StepHandler"
        end
        if handler.instance_method(:call).owner == StepHandler
          raise ArgumentError, "handler class #{handler} must define call(step)"
        end

        name ||= handler.handler_name
      end
      raise TypeError, "handler for #{name.inspect} does not respond to call" unless handler.respond_to?(:call)

      Types.string!("name", name)
      raise ArgumentError, "handler name must not be empty" if name.empty?
      raise Tasker::Error.build("invalid_state", "register handlers before starting the worker") if running?

      @handlers[name] = handler
      self
    end

    # Every registered handler name, sorted.
    def handler_names
      @handlers.keys.sort
    end

    # True between #start and the end of #stop (never in a forked child: the threads
    # stay in the parent).
    def running?
      !@worker_id.nil? && @pid == Process.pid
    end

    # Works until the session is idle (nothing held, nothing claimable for these
    # handlers, no retry of them scheduled), then closes the session and returns its
    # counts (Tasker::WorkerStats). Steps other processes may create later are not
    # waited for.
    def run_until_idle
      open_session(until_idle: true)
      begin
        @lanes.each(&:join)
      ensure
        stats = shutdown(DEFAULT_GRACE)
      end
      raise @failure if @failure

      stats
    end

    # Starts working in background threads and returns self at once. Call #stop.
    def start
      open_session(until_idle: false)
      self
    end

    # Stops: threads finish the handler they are running (waiting up to +grace+
    # seconds), hand back the steps they had not started, and the session is closed.
    # Returns the session's counts. Idempotent.
    def stop(grace: DEFAULT_GRACE)
      raise TypeError, "grace must be a number of seconds, got #{Types.describe(grace)}" unless grace.is_a?(Numeric)

      return @last_stats unless running?

      stats = shutdown(grace)
      raise @failure if @failure

      stats
    end

    # The session's counts so far (completed, failed, lost, released); after #stop,
    # those of the last session.
    def stats
      return @last_stats unless running?

      WorkerStats.from_h(@tasker.worker_stats(@worker_id))
    end

    def inspect
      "#<Tasker::Worker handlers=#{handler_names.inspect} concurrency=#{@concurrency} " \
        "#{running? ? "running as #{@worker_id}" : 'stopped'}>"
    end

    private

    def open_session(until_idle:)
      forget_inherited_session
      raise Tasker::Error.build("invalid_state", "the worker is already running") if running?
      raise ArgumentError, "register at least one handler before running the worker" if @handlers.empty?

      req = { handlers: handler_names, concurrency: @concurrency, batch: [@batch_size * @concurrency, 1000].min,
              lease_ms: @lease_ms, name: @name }
      opened = @tasker.worker_open(**req)
      forward_logs
      Tasker.logger.warn("tasker worker: #{opened['warning']}") if opened["warning"]
      @worker_id = opened["worker_id"]
      @pid = Process.pid
      @failure = nil
      @stopping = false
      wait = until_idle ? @idle_wait_ms : @wait_ms
      @tokens = Array.new(@concurrency + 1) { Native::Cancel.new }
      @lanes = @tokens.first(@concurrency).each_with_index.map do |token, i|
        thread("tasker-worker-#{i}") { lane(token, wait, until_idle) }
      end
      @watcher = thread("tasker-worker-stops") { watch(@tokens.last) }
    end

    def thread(name, &body)
      t = Thread.new(&body)
      t.name = name
      t.report_on_exception = false
      t
    end

    # A Worker copied into a forked child: its threads and session stayed in the parent.
    def forget_inherited_session
      return if @pid.nil? || @pid == Process.pid

      @worker_id = nil
      @pid = nil
      @lanes = []
      @tokens = []
      @held = {}
      @lock = Mutex.new
    end

    # Stops the lanes, waits for them up to +grace+ seconds, closes the session.
    def shutdown(grace)
      @stopping = true
      @tokens.each(&:cancel)
      deadline = monotonic + grace
      @lanes.each { |t| t.join([deadline - monotonic, 0].max) }
      @watcher&.join([deadline - monotonic, 0].max)
      grace_ms = ((deadline - monotonic) * 1000).ceil.clamp(0, 60_000)
      id = @worker_id
      begin
        closed = @tasker.worker_close(id, grace_ms: grace_ms)
        @last_stats = WorkerStats.from_h(closed)
      rescue ClosedError
        # The client was closed under the worker: the session went with it.
        nil
      end
      forward_logs
      # Threads still in a handler past the grace period find the session closed when
      # they report, and end.
      @worker_id = nil
      @pid = nil
      @lanes = []
      @watcher = nil
      @last_stats
    end

    def monotonic
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end

    # One thread's loop: take steps, run them, report them with the next take.
    def lane(token, wait, until_idle)
      h = @tasker.native
      id = @worker_id
      size = @concurrency > 1 ? 1 : @batch_size
      page = nil
      loop do
        if page.nil?
          break if @stopping

          page = h.worker_next(id, size, wait, token)
          next if page.nil? # the wait was cut short by #stop: look at @stopping again
        end
        rows, stops, idle, unusual = page
        # Held before the stops are applied: a page can carry a step and its stop, and
        # the watching thread can hear a stop before this lane starts the handler.
        steps = hold(rows)
        apply_stops(stops)
        log_unusual(unusual)
        forward_logs
        if steps.empty?
          if idle && until_idle
            # Nothing held by any thread, nothing claimable, no retry scheduled.
            finish
            break
          end
          page = nil
          next
        end
        started = monotonic
        outcomes, fatal = run_batch(steps)
        fast = (monotonic - started) / steps.size < SLOW_STEP_S
        size = fast ? [size * 2, @batch_size].min : 1
        page = h.worker_report(id, outcomes, @stopping || fatal ? 0 : size)
        raise fatal if fatal
      end
    rescue ClosedError, NotFoundError
      # The client or the session was closed under this thread (#stop after its grace
      # period, or Client#close): its steps were released by core.
      nil
    rescue Exception => e # rubocop:disable Lint/RescueException
      @failure ||= e
      finish
    end

    # Waits for the session's stop signals (only those: max 0) while the lanes are busy
    # in handlers, which is when nobody else asks the session.
    def watch(token)
      h = @tasker.native
      id = @worker_id
      until @stopping
        page = h.worker_next(id, 0, 1000, token)
        apply_stops(page[1]) unless page.nil?
      end
    rescue ClosedError, NotFoundError
      nil
    rescue Exception => e # rubocop:disable Lint/RescueException
      @failure ||= e
      finish
    end

    # Passes the engine's log lines (target tasker::*) on to Tasker.logger.
    def forward_logs
      Native.drain_logs(1000).each do |level, target, message|
        severity = LOG_LEVELS.fetch(level, Logger::DEBUG)
        Tasker.logger.add(severity, "#{target}: #{message}", "tasker")
      end
    end

    LOG_LEVELS = { "error" => Logger::ERROR, "warn" => Logger::WARN, "info" => Logger::INFO }.freeze
    private_constant :LOG_LEVELS

    # Ends every lane (the run is idle, or one lane failed).
    def finish
      @stopping = true
      @tokens.each(&:cancel)
    end

    def apply_stops(stops)
      return if stops.empty?

      @lock.synchronize do
        stops.each do |s|
          step = @held[s["step_id"]]
          step&.stop!(s["reason"])
        end
      end
    end

    def log_unusual(results)
      results.each do |r|
        next unless r["outcome"] == "lost"

        Tasker.logger.info("tasker worker #{@worker_id}: report for step #{r['step_id']} refused " \
                           "(#{r.dig('error', 'message') || 'lost'})")
      end
    end

    # The steps of a page, held (so stop signals reach them) until run_batch ends.
    def hold(rows)
      steps = rows.map { |r| Step.from_wire(r).tap { |s| s.bind_client(@tasker) } }
      @lock.synchronize { steps.each { |s| @held[s.step_id] = s } }
      steps
    end

    # Runs a batch: [outcomes, fatal] where fatal is an exit or signal raised by a
    # handler (recorded as that step's failure, then raised once the batch is reported).
    def run_batch(steps)
      outcomes = []
      fatal = nil
      steps.each do |step|
        if @stopping || fatal
          outcomes << [step.step_id, :release]
        elsif step.cancelled?
          # Stopped before it started: handed back (core counts it as lost, or released).
          outcomes << [step.step_id, :release]
        else
          outcome, fatal = run_one(step)
          outcomes << outcome
        end
      end
      [outcomes, fatal]
    ensure
      @lock.synchronize { steps&.each { |s| @held.delete(s.step_id) } }
    end

    def run_one(step)
      handler = @handlers.fetch(step.handler)
      result = handler.call(step)
      return [[step.step_id, :wait_for_children], nil] if result.equal?(WAIT_FOR_CHILDREN)

      [[step.step_id, :ok, result], nil]
    rescue SystemExit, SignalException => e
      [[step.step_id, :error, error_doc(e)], e]
    rescue Exception => e # rubocop:disable Lint/RescueException
      [[step.step_id, :error, error_doc(e)], nil]
    end

    def error_doc(e)
      cls = e.class.name || e.class.inspect
      doc = {
        "message" => text(e.message.to_s.empty? ? cls : e.message),
        "kind" => cls.split("::").last,
        "exception" => cls,
        "retryable" => !e.is_a?(PermanentError),
        "backtrace" => text(e.full_message(highlight: false, order: :top))
      }
      if e.is_a?(RetryableError) && !e.retry_after.nil?
        doc["retry_after_ms"] = (e.retry_after * 1000).round
      end
      details = e.is_a?(HandlerError) ? e.details : nil
      doc["details"] = json_safe(details) unless details.nil?
      doc
    end

    def text(s)
      s.to_s.encode("UTF-8", invalid: :replace, undef: :replace).scrub
    end

    # Details that are not JSON data are kept as their inspect text.
    def json_safe(details)
      Native.to_json(details, "details")
      details
    rescue TypeError, ArgumentError, RangeError => e
      { "unserializable" => text(details.inspect[0, 1000]), "reason" => text(e.message) }
    end
  end
end
