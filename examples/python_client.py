"""The FastAPI tutorial's client flow, unchanged, against authgate.

The tutorial (https://fastapi.tiangolo.com/tutorial/security/oauth2-jwt/)
logs in with a form POST of `username` + `password` to `/token`, then calls
the API with `Authorization: Bearer <access_token>`. authgate answers
`/token` itself and puts the verified identity in headers for the backend.

    python3 examples/python_client.py https://127.0.0.1:8443 certs/dev-cert.pem alice@example.com secret123
"""

import json
import sys

import requests


def main(base, ca_file, username, password):
    r = requests.post(f"{base}/token", data={"username": username, "password": password}, verify=ca_file, timeout=10)
    r.raise_for_status()
    token = r.json()
    assert token["token_type"] == "bearer", token
    me = requests.get(f"{base}/users/me", headers={"Authorization": f"Bearer {token['access_token']}"}, verify=ca_file, timeout=10)
    print(json.dumps({"login": r.status_code, "me_status": me.status_code, "me": me.json()}))
    bad = requests.get(f"{base}/users/me", headers={"Authorization": "Bearer nope"}, verify=ca_file, timeout=10)
    print(json.dumps({"bad_status": bad.status_code, "www_authenticate": bad.headers.get("WWW-Authenticate")}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
