# frozen_string_literal: true

# Puma in cluster mode: the app (and its Tasker client) is loaded once in the master,
# then forked into WEB_CONCURRENCY worker processes, each running its own Tasker::Worker.
workers Integer(ENV.fetch("WEB_CONCURRENCY", "2"))
threads 1, Integer(ENV.fetch("PUMA_MAX_THREADS", "4"))
bind "tcp://127.0.0.1:#{ENV.fetch('PORT', '9292')}"
rackup File.join(__dir__, "config.ru")
preload_app!

before_fork do
  # Opens the client in the master, before the fork, as an app that registers its
  # templates at boot would.
  Shop.tasker
end

on_worker_boot do
  Shop.start_worker
end

on_worker_shutdown do
  Shop.stop_worker
end
