#!/usr/bin/env python3
"""The conformance kit over SMTP: one session per scenario, against any
SMTP server that judges mail (the attrelay relay, Haraka with the plugin).

    python3 conformance/runners/smtp.py PORT CERTS [SCENARIO ...]

The server listens on PORT of loopback, IPv4 and IPv6 (127.0.0.1 and ::1).
Each session comes from the scenario's client address, which must be
local (as root: `ip addr add 203.0.113.10/32 dev lo`, `ip -6 addr add
2001:db8::25/128 dev lo nodad`), to the loopback address of its family; it says EHLO with the
kit's HELO, upgrades with STARTTLS when the scenario has TLS, presenting
the scenario's certificate chain and key from CERTS (made by
make-certs.py), then sends MAIL FROM and each RCPT TO and quits. Without
SCENARIO names, every scenario runs.

A recipient answered `452 4.5.3` (a host that carries one tenant per
message) is sent again in a new transaction, as a client would.

Prints one JSON object: scenario name -> {"mail": [code, text], "rcpts":
[[code, text], ...] (each recipient's last reply), "commands": [[stage,
address, code, text], ...] (every MAIL and RCPT in order)}. Reply texts
start with the enhanced status code.
"""

import json
import pathlib
import smtplib
import ssl
import sys


def session(kit, s, port, certs):
    client = s["client_ip"]
    server = "::1" if ":" in client else "127.0.0.1"
    smtp = smtplib.SMTP(server, port, timeout=30, source_address=(client, 0))
    try:
        smtp.ehlo(kit["helo"])
        if s["tls"] is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            name = s["tls"].get("certificate")
            if name:
                ctx.load_cert_chain(str(certs / f"{name}.pem"), str(certs / f"{name}.key"))
            smtp.starttls(context=ctx)
            smtp.ehlo(kit["helo"])
        commands = []

        def send(stage, address):
            line = f"MAIL FROM:<{address}>" if stage == "mail" else f"RCPT TO:<{address}>"
            code, text = smtp.docmd(line)
            reply = [code, text.decode("latin-1")]
            commands.append([stage, address, *reply])
            return reply

        mail = send("mail", s["sender"])
        rcpts = [None] * len(s["recipients"])
        todo = list(range(len(s["recipients"])))
        # A host that cannot carry one message for several tenants answers
        # 452 4.5.3 to a recipient of a second tenant; as any client would,
        # send it again in a transaction of its own (RFC 5321 4.5.3.1.10).
        for _ in range(5):
            again = []
            for i in todo:
                rcpts[i] = send("rcpt", s["recipients"][i]["address"])
                if rcpts[i][0] == 452 and rcpts[i][1].startswith("4.5.3"):
                    again.append(i)
            smtp.rset()
            if not again or mail[0] != 250:
                break
            send("mail", s["sender"])
            todo = again
        return {"mail": mail, "rcpts": rcpts, "commands": commands}
    finally:
        try:
            smtp.quit()
        except smtplib.SMTPException:
            smtp.close()


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    port, certs = int(sys.argv[1]), pathlib.Path(sys.argv[2])
    wanted = set(sys.argv[3:])
    kit = json.loads((pathlib.Path(__file__).parent.parent / "scenarios.json").read_text())
    results = {}
    for s in kit["scenarios"]:
        if not wanted or s["name"] in wanted:
            results[s["name"]] = session(kit, s, port, certs)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
