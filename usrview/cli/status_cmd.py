"""``usrview status``: the recorded images, current and previous marked."""

from __future__ import annotations

import json
import sys

from usrview import images
from usrview.cli._common import add_store_option, open_store
from usrview.errors import EXIT_OK

HELP = "list the recorded images"
DESCRIPTION = """\
List the store's images, newest first: id, creation time (UTC), number of
packages, and marks: "current", "previous", "in use" (a running view holds it)
the packages imported unsigned, and those only the legacy signature policy
accepts (keys bound by SHA-1 self-signatures; --signature-policy legacy).  Then each image's boot state: good, on
trial (with the boots it has left before the initrd falls back) or bad, which
image the latest boot serves, and the last fallback event (the initrd served
the last good image instead of the one asked for).  --json prints one JSON object.
Exit status: 0, or 2 when the store cannot be read."""


def register(sub, common) -> None:
    p = sub.add_parser("status", parents=[common], help=HELP, description=DESCRIPTION)
    add_store_option(p)
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=run)


def run(args, cfg) -> int:
    store = open_store(args, cfg)
    data = images.status(store)
    out = sys.stdout
    if args.json:
        out.write(json.dumps(data, indent=1) + "\n")
        return EXIT_OK
    if not data["images"]:
        out.write(f"store {data['store']}: no images\n")
        return EXIT_OK
    out.write(f"store {data['store']}\n")
    out.write(f"  {'ID':<24}  {'CREATED (UTC)':<19}  {'PACKAGES':>8}  MARKS\n")
    for im in data["images"]:
        marks = [m for m in ("current", "previous") if im[m]]
        if im["in_use"]:
            marks.append("in use")
        if im["unsigned"]:
            marks.append(f"UNSIGNED: {', '.join(im['unsigned'])}")
        if im["legacy_signature_policy"]:
            marks.append(f"legacy signature policy: {', '.join(im['legacy_signature_policy'])}")
        created = im["created"][:19].replace("T", " ")
        star = "*" if im["current"] else " "
        out.write(f"{star} {im['id']:<24}  {created:<19}  {im['packages']:>8}  {', '.join(marks)}".rstrip()
                  + "\n")
    write_boot_states(data, out)
    return EXIT_OK


def boot_state_text(im: dict, data: dict) -> str:
    text = {"good": "good", "bad": "BAD", "trial": f"on trial ({im['tries']} tries left)"}[im["boot"]]
    notes = [n for n, on in (("last good", im["id"] == data["last_good"]),
                             ("this boot", (data["booted"] or {}).get("image") == im["id"])) if on]
    return text + (f" ({', '.join(notes)})" if notes else "")


def write_boot_states(data: dict, out) -> None:
    out.write("boot states\n")
    for im in data["images"]:
        out.write(f"  {im['id']:<24}  {boot_state_text(im, data)}\n")
    event = data["last_fallback"]
    if event:
        out.write(f"last fallback: {event['at']}: booted {event['booted']} instead of "
                  f"{event['requested']}: {event['reason']}\n")
    if data["boot_state_problem"]:
        out.write(f"warning: {data['boot_state_problem']}\n")
