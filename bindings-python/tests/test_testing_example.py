# The example test of docs/testing.md ("Testing your workflows"), run as written.
import tasker
from tasker.testing import harness

TEMPLATE = """
namespace: shop
name: checkout
version: "1"
defaults:
  retry: { max_attempts: 3, backoff: fixed, base_ms: 600000, max_ms: 600000 }  # ten minutes
steps:
  - { name: charge, handler: charge_card }
  - { name: email,  handler: send_receipt, depends_on: [charge] }
"""


def test_a_declined_card_is_charged_again_ten_minutes_later():
    with harness() as t:  # temporary SQLite database, manual clock
        t.register_template(yaml=TEMPLATE)
        task = t.create_task("shop", "checkout", context={"order": 7})
        worker = tasker.Worker(t)

        @worker.handler("charge_card")
        def charge(step):
            if step.attempt == 1:
                raise tasker.RetryableError("card declined")
            return {"charged_at": t.now()}

        @worker.handler("send_receipt")
        def email(step):
            return {"sent": True}

        started = t.now()
        stats = t.run_until_idle(worker)  # moves the clock to the retry: no waiting

        assert (stats.completed, stats.failed) == (2, 1)
        done = t.get_task(task["task_id"])
        assert done["state"] == "complete"
        charge_step = next(s for s in done["steps"] if s["name"] == "charge")
        assert charge_step["attempts"] == 2
        assert charge_step["result"]["charged_at"] > started
