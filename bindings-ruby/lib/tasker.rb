# frozen_string_literal: true

require "logger"
require "pathname"

require_relative "tasker/version"
require_relative "tasker/errors"
require_relative "tasker/types"
require "tasker/tasker_native"
require_relative "tasker/client"
require_relative "tasker/step_handler"
require_relative "tasker/worker"

# Tasker: workflow orchestration over one Rust engine. Open a client, register
# templates, create tasks, and run handlers with a Tasker::Worker:
#
#   Tasker.open("sqlite://app.db") do |tasker|
#     tasker.register_template("templates/fulfill.yaml")
#     task = tasker.create_task("orders", "fulfill", "1.0.0", context: { order_id: 42 })
#     worker = Tasker::Worker.new(tasker, concurrency: 8)
#     worker.handle("validate_order") { |step| { "valid" => true } }
#     worker.run_until_idle
#     tasker.get_task(task["task_id"])["state"]   # => "complete"
#   end
module Tasker
  unless Native.error_codes.sort == ERROR_CLASSES.keys.sort
    raise LoadError, "tasker: the native extension's error codes #{Native.error_codes.inspect} " \
                     "do not match lib/tasker/errors.rb"
  end
  unless Native.version == VERSION
    raise LoadError, "tasker: native extension #{Native.version} does not match the gem's #{VERSION}"
  end

  # What a handler returns (via Tasker.wait_for_children) to have its step wait for
  # the child tasks it started with Step#start_child.
  WAIT_FOR_CHILDREN = Object.new.tap do |o|
    def o.inspect
      "Tasker::WAIT_FOR_CHILDREN"
    end
  end.freeze

  class << self
    # The handler's return value that makes its step wait for its child tasks instead
    # of completing: the step completes with {"children" => [{"task_id", "key",
    # "state", "results"}, ...]} in start order once every child is final, or fails
    # with kind "child_failed" when one ends in error or cancelled.
    def wait_for_children
      WAIT_FOR_CHILDREN
    end

    # Opens a Tasker::Client (see Tasker::Client.open). With a block, yields it, closes
    # it when the block ends and returns the block's value.
    def open(config = nil, **settings)
      client = Client.open(config, **settings)
      return client unless block_given?

      begin
        yield client
      ensure
        client.close
      end
    end

    # Where the gem logs (worker warnings, failed event callbacks): a Logger on $stderr
    # at WARN unless set.
    attr_writer :logger

    def logger
      @logger ||= Logger.new($stderr, level: Logger::WARN, progname: "tasker")
    end
  end
end
