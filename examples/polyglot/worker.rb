# frozen_string_literal: true

# The Ruby worker of the polyglot invoice workflow (docs/polyglot.md): prices the order.
# Opens the database named by TASKER_DATABASE_URL and works until SIGTERM or SIGINT.
require "tasker"

price_order = lambda do |step|
  order = step.results["validate"]
  rate = step.config["tax_rate"]
  lines = order["lines"].map { |l| l.merge("cents" => l["qty"] * l["unit_cents"]) }
  subtotal = lines.sum { |l| l["cents"] }
  tax = (subtotal * rate).round
  { language: "ruby", order_id: order["order_id"], customer: order["customer"], lines: lines,
    subtotal_cents: subtotal, tax_rate: rate, tax_cents: tax, total_cents: subtotal + tax }
end

Tasker.open(ENV.fetch("TASKER_DATABASE_URL")) do |t|
  worker = Tasker::Worker.new(t, concurrency: 4, name: "ruby-#{Process.pid}")
  worker.handle("rb_price_order", price_order)
  worker.start
  stop = Queue.new
  %w[TERM INT].each { |sig| Signal.trap(sig) { stop << sig } }
  stop.pop
  worker.stop
end
