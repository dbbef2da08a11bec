# frozen_string_literal: true

require_relative "lib/tasker/version"
require_relative "ext/tasker/sources"

# The gem carries the engine's Rust sources under vendor/tasker-src and builds the
# native extension from them with cargo when it is installed (ext/tasker/extconf.rb).
# Building the gem from the repository (`gem build tasker.gemspec` in bindings-ruby/)
# stages those sources from the checkout first.
repo = File.expand_path("..", __dir__)
staged = File.join(__dir__, "vendor", "tasker-src")
if File.file?(File.join(repo, "core", "Cargo.toml")) && File.file?(File.join(repo, "Cargo.lock"))
  Tasker::Sources.sync(Tasker::Sources.read(repo), staged)
end

Gem::Specification.new do |s|
  s.name = "tasker"
  s.version = Tasker::VERSION
  s.summary = "Workflow orchestration: templates, tasks, steps and workers over one Rust engine"
  s.description = "Ruby client and worker for the Tasker engine (SQLite or PostgreSQL). " \
                  "A native extension (magnus) links the engine directly; every call releases the GVL."
  s.authors = ["Tasker developers"]
  s.license = "MIT"
  s.homepage = "https://example.invalid/tasker"
  s.required_ruby_version = ">= 3.1"
  s.files = Dir.chdir(__dir__) do
    Dir["lib/**/*.rb", "ext/tasker/extconf.rb", "ext/tasker/sources.rb", "README.md"] +
      Dir.glob("vendor/tasker-src/**/*", File::FNM_DOTMATCH).select { |f| File.file?(f) }
  end.sort
  s.extensions = ["ext/tasker/extconf.rb"]
  s.require_paths = ["lib"]
  s.metadata["rubygems_mfa_required"] = "true"
end
