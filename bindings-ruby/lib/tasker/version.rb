# frozen_string_literal: true

module Tasker
  # The gem's version: the workspace version of tasker-core it is built with.
  VERSION = "0.1.0"
end
