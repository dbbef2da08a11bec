# frozen_string_literal: true

require "fileutils"

module Tasker
  # The Rust sources the gem carries and builds (used by tasker.gemspec to stage them
  # from the checkout, and by extconf.rb to lay out its build tree).
  module Sources
    module_function

    # The parts of the repository the extension needs, relative to its root: the
    # workspace manifest and lock file, the engine (core), its SQL migrations, and the
    # extension crate itself.
    TREES = ["core/src", "migrations", "bindings-ruby/src"].freeze
    FILES = ["Cargo.lock", "core/Cargo.toml", "bindings-ruby/Cargo.toml"].freeze
    # The workspace members the gem builds.
    MEMBERS = %w[core bindings-ruby].freeze

    # Every file to carry, relative to the root +from+.
    def list(from)
      trees = TREES.flat_map do |t|
        Dir.glob("**/*", base: File.join(from, t)).map { |f| File.join(t, f) }
      end
      (FILES + trees).select { |f| File.file?(File.join(from, f)) }.sort
    end

    # The workspace manifest with only the gem's members.
    def workspace_manifest(text)
      rewritten = text.sub(/^members\s*=\s*\[[^\]]*\]/m, "members = #{MEMBERS.inspect}")
      raise "Cargo.toml has no `members = [...]` line to rewrite" if rewritten == text

      rewritten
    end

    # Makes +to+ hold exactly +files+ (relative path => content), writing only the files
    # whose content changed, so cargo's incremental build sees unchanged files unchanged.
    def sync(files, to)
      files.each do |rel, content|
        dest = File.join(to, rel)
        next if File.file?(dest) && File.binread(dest) == content

        FileUtils.mkdir_p(File.dirname(dest))
        File.binwrite(dest, content)
      end
      Dir.glob("**/*", base: to).sort.reverse_each do |rel|
        path = File.join(to, rel)
        if File.file?(path)
          File.delete(path) unless files.key?(rel)
        elsif File.directory?(path) && Dir.empty?(path)
          Dir.rmdir(path)
        end
      end
    end

    # The staged tree (relative path => content) read from the repository root +from+.
    def read(from)
      files = list(from).to_h { |rel| [rel, File.binread(File.join(from, rel))] }
      files["Cargo.toml"] = workspace_manifest(File.read(File.join(from, "Cargo.toml")))
      files
    end

    # The staged tree read back from a staging directory (as extracted from the gem).
    def read_staged(dir)
      Dir.glob("**/*", base: dir).select { |f| File.file?(File.join(dir, f)) }
         .to_h { |rel| [rel, File.binread(File.join(dir, rel))] }
    end
  end
end
