#!/usr/bin/env python3
"""Writes the WAF benchmarks' benign 1 KiB JSON order (run-waf.sh, run-modsecurity.sh,
waf-proxy-instructions.sh) to the file named by the first argument."""
import json
import sys

items, i = [], 0
while True:
    doc = {"order_id": 1001, "customer": {"name": "Jane O'Neil", "email": "jane@example.com"},
           "note": "Leave it at the door, please; the bell is broken.", "items": items}
    text = json.dumps(doc)
    if len(text) >= 1024:
        break
    items.append({"sku": f"SKU-{i:04}", "qty": i % 3 + 1, "price": 10 + i + 0.99,
                  "title": "Blue cotton shirt, size M"})
    i += 1
open(sys.argv[1], "w").write(text)
