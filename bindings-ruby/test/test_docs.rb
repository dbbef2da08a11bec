# frozen_string_literal: true

require_relative "test_helper"
require "open3"

# The README's Ruby examples, run verbatim in fresh processes against the installed gem
# (```ruby blocks; ```rb blocks are fragments, such as a Puma config, and are not run).
class DocsTest < Minitest::Test
  README = File.expand_path("../README.md", __dir__)

  def blocks
    File.read(README).scan(/^```ruby\n(.*?)^```/m).map(&:first)
  end

  # Runs a block in a fresh process (blocks after the first rely on its `require`).
  def run_block(code, dir)
    env = ENV.to_h.reject { |k, _| k.start_with?("TASKER_") }
    code = "require \"tasker\"\n#{code}" unless code.include?('require "tasker"')
    Open3.capture3(env, "ruby", "-e", code, chdir: dir)
  end

  def test_every_ruby_block_runs
    expected = ["complete", "", "not_found", "1"]
    assert_equal expected.size, blocks.size, "README.md's ```ruby blocks changed: update this test"
    Dir.mktmpdir("tasker-rb-docs-") do |dir|
      blocks.each_with_index do |code, i|
        out, err, status = run_block(code, dir)
        assert status.success?, "README block #{i + 1} failed:\n#{code}\n#{err}"
        assert_equal expected[i], out.strip, "README block #{i + 1} printed #{out.inspect}"
      end
      Tasker.open("sqlite://#{dir}/app.db") do |t|
        tasks = t.list_tasks["tasks"]
        greet = tasks.find { |x| x["name"] == "greet" }
        assert_equal %w[complete greet-world], greet.values_at("state", "idempotency_key")
        pay = t.get_task(tasks.find { |x| x["name"] == "pay" }["id"])
        assert_equal({ "charged" => 1200, "currency" => "EUR" }, pay["steps"][0]["result"])
      end
    end
  end
end
