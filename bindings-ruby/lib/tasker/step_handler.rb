# frozen_string_literal: true

module Tasker
  # Base class for handler classes, the Ruby way to write a handler with helpers:
  #
  #   class ValidateOrder < Tasker::StepHandler
  #     handler_name "validate_order"        # optional: the default is the class name
  #                                          # in snake case ("validate_order")
  #     def call(step)
  #       raise Tasker::PermanentError, "no items" if step.context["items"].empty?
  #       { "valid" => true }
  #     end
  #   end
  #
  #   worker.handle(ValidateOrder)           # or worker.handle("validate_order", ValidateOrder)
  #
  # The worker makes a new instance for every step it runs, so instance variables never
  # leak from one step to the next. #call returns the step's result (JSON data).
  class StepHandler
    class << self
      # Sets (with an argument) or returns the handler name steps name in templates.
      def handler_name(name = nil)
        unless name.nil?
          Types.string!("handler_name", name)
          @handler_name = name
        end
        @handler_name || default_handler_name
      end

      # Runs a new instance on +step+ (so a handler class is itself a callable).
      def call(step)
        new.call(step)
      end

      private

      def default_handler_name
        base = name.to_s.split("::").last.to_s
        raise ArgumentError, "an anonymous handler class needs handler_name \"...\"" if base.empty?

        base.gsub(/([A-Z]+)([A-Z][a-z])/, '\1_\2').gsub(/([a-z\d])([A-Z])/, '\1_\2').downcase
      end
    end

    # Runs the step and returns its result. Subclasses define it.
    def call(_step)
      raise NotImplementedError, "#{self.class} must define call(step)"
    end
  end
end
