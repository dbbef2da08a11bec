# frozen_string_literal: true

# Builds the native extension tasker/tasker_native with cargo (no rb_sys gem needed)
# from the Rust sources the gem carries (vendor/tasker-src), then writes a Makefile
# whose `install` copies the built library where RubyGems wants it; `all` and `clean`
# do nothing (the library is already built, and `make clean` must not remove it).
#
# Needs cargo (https://rustup.rs) and, for the bindings of Ruby's C API, Ruby's headers
# and libclang (Debian: ruby-dev libclang-dev). Settings, from the environment:
#   TASKER_CARGO_PROFILE  cargo profile, default "release" ("dev" for a quick debug build)
#   CARGO_TARGET_DIR      reuse a cargo target directory (kept); without it the build
#                         happens in a scratch directory removed afterwards
#   CARGO                 the cargo to run (default: cargo on PATH, then ~/.cargo/bin/cargo)

require "fileutils"
require "rbconfig"
require "shellwords"
require_relative "sources"

here = __dir__
staged = File.expand_path("../../vendor/tasker-src", here)
abort "tasker: #{staged} is missing: build the gem with `gem build tasker.gemspec` from the repository" \
  unless File.file?(File.join(staged, "Cargo.toml"))

cargo = ENV.fetch("CARGO", nil)
cargo ||= ENV.fetch("PATH", "").split(File::PATH_SEPARATOR).map { |d| File.join(d, "cargo") }
             .find { |p| File.executable?(p) }
home_cargo = File.join(Dir.home, ".cargo", "bin", "cargo")
cargo ||= home_cargo if File.executable?(home_cargo)
abort "tasker: cargo was not found; install Rust (https://rustup.rs) to build the native extension" if cargo.nil?

profile = ENV.fetch("TASKER_CARGO_PROFILE", "release")
abort "tasker: TASKER_CARGO_PROFILE must be a cargo profile name, got #{profile.inspect}" \
  unless profile.match?(/\A[A-Za-z0-9_-]+\z/)

scratch = nil
if (target = ENV.fetch("CARGO_TARGET_DIR", nil)) && !target.empty?
  # A kept target directory: build from a copy beside it that changes only where the
  # sources changed, so reinstalling the gem rebuilds only what changed.
  target = File.expand_path(target)
  tree = File.join(target, "tasker-gem-src")
  Tasker::Sources.sync(Tasker::Sources.read_staged(staged), tree)
else
  tree = staged
  scratch = target = File.join(here, "cargo-target")
end

cmd = [cargo, "build", "--manifest-path", File.join(tree, "Cargo.toml"), "-p", "tasker-ruby", "--profile", profile]
puts "tasker: #{cmd.shelljoin} (CARGO_TARGET_DIR=#{target})"
$stdout.flush
ok = system({ "CARGO_TARGET_DIR" => target }, *cmd)
abort "tasker: cargo build failed (see the output above)" unless ok

out_dir = File.join(target, profile == "dev" ? "debug" : profile)
built = %w[libtasker_native.so libtasker_native.dylib tasker_native.dll]
        .map { |f| File.join(out_dir, f) }.find { |f| File.file?(f) }
abort "tasker: cargo built no libtasker_native in #{out_dir}" if built.nil?

dlext = RbConfig::CONFIG.fetch("DLEXT")
lib = "tasker_native.#{dlext}"
FileUtils.cp(built, File.join(here, lib))
FileUtils.rm_rf(scratch) if scratch

sitearch = RbConfig::CONFIG.fetch("sitearchdir")
File.write(File.join(here, "Makefile"), <<~MAKE)
  # Written by extconf.rb: cargo already built #{lib}; `make install` places it.
  sitearchdir = #{sitearch}
  sitelibdir = #{RbConfig::CONFIG.fetch('sitelibdir')}
  DESTDIR =

  all:
  \t@:

  install: #{lib}
  \tmkdir -p "$(DESTDIR)$(sitearchdir)/tasker"
  \tcp #{lib} "$(DESTDIR)$(sitearchdir)/tasker/#{lib}"

  clean:
  \t@:

  distclean:
  \t@:

  .PHONY: all install clean distclean
MAKE
