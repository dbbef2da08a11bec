"""The Python worker of the polyglot invoice workflow (docs/polyglot.md): validates the
order and renders the invoice. Opens the database named by TASKER_DATABASE_URL and works
until SIGTERM or SIGINT."""

from __future__ import annotations

import os
from typing import Any, Dict

import tasker


def validate_order(step: tasker.Step) -> Dict[str, Any]:
    order = step.context
    lines = []
    for item in order["items"]:
        if item["qty"] <= 0:
            raise tasker.PermanentError(f"{item['sku']}: quantity must be positive")
        lines.append({"sku": item["sku"].upper(), "qty": item["qty"], "unit_cents": item["unit_cents"]})
    return {"language": "python", "order_id": order["order_id"],
            "customer": order["customer"].strip(), "lines": lines}


def render_invoice(step: tasker.Step) -> Dict[str, Any]:
    price, reserve, sign = step.results["price"], step.results["reserve"], step.results["sign"]
    text = "\n".join([
        f"Invoice for order {price['order_id']} ({price['customer']})",
        *(f"  {line['sku']:<8} x{line['qty']:<3} {line['cents'] / 100:>9.2f}" for line in price["lines"]),
        f"  tax {price['tax_rate'] * 100:.2f}%     {price['tax_cents'] / 100:>9.2f}",
        f"  total          {price['total_cents'] / 100:>9.2f}",
        f"  stock held as  {', '.join(reserve['reservations'])}",
        f"  signature      {sign['signature']:016x}",
    ])
    return {"language": "python", "text": text}


def main() -> None:
    with tasker.Tasker.open(os.environ["TASKER_DATABASE_URL"]) as t:
        worker = tasker.Worker(t, concurrency=4, worker_id=f"python-{os.getpid()}")
        worker.register("py_validate_order", validate_order)
        worker.register("py_render_invoice", render_invoice)
        worker.run()


if __name__ == "__main__":
    main()
