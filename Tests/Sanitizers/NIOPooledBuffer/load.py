"""Clients for the reproduction: CLIENTS connections at once, each posting ROUNDS bodies of mixed sizes (0.7 KB to
600 KB, so that some arrive in one read and some in many) and checking the answer.

    python3 load.py PORT ROUNDS CLIENTS
"""
import http.client
import os
import random
import sys
import threading

port, rounds, clients = (int(a) for a in sys.argv[1:4])


def client(k):
    rnd = random.Random(k)
    connection = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(rounds):
        body = os.urandom(rnd.choice([700, 5000, 40_000, 130_000, 600_000]))
        connection.request("POST", "/echo", body=body, headers={"Content-Type": "application/octet-stream"})
        assert connection.getresponse().read() == str(len(body)).encode()


threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
