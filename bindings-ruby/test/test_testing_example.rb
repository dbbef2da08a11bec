# The example test of docs/testing.md ("Testing your workflows"), run as written.
require "minitest/autorun"
require "tasker"
require "tasker/testing"

class CheckoutTest < Minitest::Test
  TEMPLATE = <<~YAML
    namespace: shop
    name: checkout
    version: "1"
    defaults:
      retry: { max_attempts: 3, backoff: fixed, base_ms: 600000, max_ms: 600000 }  # ten minutes
    steps:
      - { name: charge, handler: charge_card }
      - { name: email,  handler: send_receipt, depends_on: [charge] }
  YAML

  def test_a_declined_card_is_charged_again_ten_minutes_later
    Tasker::Testing.open do |t| # temporary SQLite database, manual clock
      t.register_template(yaml: TEMPLATE)
      task = t.create_task("shop", "checkout", context: { order: 7 })
      worker = Tasker::Worker.new(t)
      worker.handle("charge_card") do |step|
        raise Tasker::RetryableError, "card declined" if step.attempt == 1

        { charged_at: t.now }
      end
      worker.handle("send_receipt") { |_step| { sent: true } }

      started = t.now
      stats = t.run_until_idle(worker) # moves the clock to the retry: no waiting

      assert_equal [2, 1], [stats.completed, stats.failed]
      done = t.get_task(task["task_id"])
      assert_equal "complete", done["state"]
      charge = done["steps"].find { |s| s["name"] == "charge" }
      assert_equal 2, charge["attempts"]
      assert_operator charge["result"]["charged_at"], :>, started
    end
  end
end
