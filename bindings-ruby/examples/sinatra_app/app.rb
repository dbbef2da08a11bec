# frozen_string_literal: true

# An order service: HTTP routes create Tasker tasks, and a Tasker::Worker in the same
# process runs their steps. Serve it with Puma (config.ru, puma.rb):
#
#   puma -C puma.rb     # the database: TASKER_DATABASE_URL, else <tmpdir>/tasker-examples/shop.db
#
#   curl -X POST localhost:9292/orders -d '{"order_id": 7, "items": [{"sku": "a", "qty": 2}]}'
#   curl localhost:9292/orders/1
#
# Puma's cluster mode forks worker processes after loading the app (preload_app!): the
# handle opened here works in every child (each gets its own engine on its first call),
# and each child starts its own Tasker::Worker in on_worker_boot.

require "fileutils"
require "json"
require "tmpdir"
require "sinatra/base"
require "tasker"

# The step handlers, as handler classes.
module Shop
  class ValidateOrder < Tasker::StepHandler
    def call(step)
      items = step.context["items"]
      bad = items.find { |i| i["sku"].strip.empty? }
      raise Tasker::PermanentError.new("item without a sku", details: { "item" => bad }) if bad

      { "items" => items.sum { |i| i["qty"] } }
    end
  end

  class ChargeCard < Tasker::StepHandler
    def call(step)
      cents = step.context["items"].sum { |i| i["qty"] * i.fetch("price_cents", 100) }
      { "charged_cents" => cents, "currency" => step.config["currency"], "pid" => Process.pid }
    end
  end

  class ReserveItems < Tasker::StepHandler
    def call(step)
      { "reserved" => step.results["validate"]["items"] }
    end
  end

  class ShipOrder < Tasker::StepHandler
    def call(step)
      { "tracking" => "TRK-#{step.context['order_id']}", "charged" => step.results["charge"]["charged_cents"] }
    end
  end

  HANDLERS = [ValidateOrder, ChargeCard, ReserveItems, ShipOrder].freeze
  TEMPLATE = File.join(__dir__, "templates", "fulfill.yaml")

  class << self
    # A SQLite file in <tmpdir>/tasker-examples: an example never writes its database
    # into the directory it runs from (the source tree).
    def default_database_url
      dir = File.join(Dir.tmpdir, "tasker-examples")
      FileUtils.mkdir_p(dir)
      "sqlite://#{File.join(dir, 'shop.db')}"
    end

    # The process's client: opened once (in Puma's master when the app is preloaded).
    def tasker
      @tasker ||= Tasker.open(ENV.fetch("TASKER_DATABASE_URL") { default_database_url }).tap do |t|
        t.register_template(TEMPLATE)
      end
    end

    # Starts this process's worker (Puma: on_worker_boot, so after the fork).
    def start_worker
      @worker = Tasker::Worker.new(tasker, concurrency: Integer(ENV.fetch("SHOP_WORKER_CONCURRENCY", "4")))
      HANDLERS.each { |h| @worker.handle(h) }
      @worker.start
    end

    def stop_worker
      @worker&.stop
      @worker = nil
    end
  end

  # The HTTP API.
  class App < Sinatra::Base
    set :show_exceptions, false
    set :raise_errors, false
    # The error handlers below answer for every error; 5xx ones are logged there.
    set :dump_errors, false

    before { content_type :json }

    get "/health" do
      Shop.tasker.ping.to_json
    end

    # Creates the order's task; the order id is the idempotency key, so a repeated POST
    # returns the same task.
    post "/orders" do
      body = JSON.parse(request.body.read)
      halt 400, error_json("invalid_argument", "the body must be a JSON object") unless body.is_a?(Hash)

      created = Shop.tasker.create_task("shop", "fulfill", context: body,
                                                           idempotency_key: "order-#{body['order_id']}")
      status(created["created"] ? 201 : 200)
      created.to_json
    end

    get "/orders/:task_id" do
      id = Integer(params["task_id"], exception: false)
      halt 404, error_json("not_found", "no order #{params['task_id']}") if id.nil?

      task = Shop.tasker.get_task(id)
      {
        "task_id" => task["id"], "state" => task["state"],
        "steps" => task["steps"].to_h { |s| [s["name"], { "state" => s["state"], "result" => s["result"] }] }
      }.to_json
    end

    error JSON::ParserError do
      halt 400, error_json("invalid_json", "the body is not JSON: #{env['sinatra.error'].message}")
    end

    # The engine's errors, with their codes: bad input is the client's fault.
    error Tasker::Error do
      e = env["sinatra.error"]
      code = case e
             when Tasker::NotFoundError then 404
             when Tasker::SchemaViolationError, Tasker::InvalidArgumentError, Tasker::TooLargeError then 400
             when Tasker::UnavailableError then 503
             else 500
             end
      warn "shop: #{e.class}: #{e.message}" if code >= 500
      halt code, error_json(e.code, e.message, e.details)
    end

    helpers do
      def error_json(code, message, details = nil)
        { "error" => { "code" => code, "message" => message, "details" => details } }.to_json
      end
    end
  end
end
