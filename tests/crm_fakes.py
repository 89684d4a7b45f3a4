"""Local stand-ins of the CRMs, real HTTP servers on 127.0.0.1, following the vendors' docs.

`HubSpotServer` follows HubSpot's CRM v3 API as documented at developers.hubspot.com: "Create
or update a batch of objects by unique property values" (POST /crm/v3/objects/{objectType}/
batch/upsert, inputs of `id`, `idProperty`, `properties`; results carry `new`), "Update a
batch of companies" (batch/update, by `idProperty` too), "Read a batch of companies" (batch/
read; a 207 lists the ids not found under `errors`), Associations v4 "batch/associate/
default", and "Error handling" (errors as `{"status": "error", "message", "category"}`; a batch
with one invalid input is refused whole; 429 with `errorType` RATE_LIMIT). Properties are
validated against their definitions as HubSpot does (unknown property, number, date,
enumeration options, unique values); an empty string clears a property.

`SalesforceServer` follows the Salesforce REST API Developer Guide, "Insert or Update (Upsert)
a Record Using an External ID": PATCH /services/data/vXX.X/sobjects/OBJECT/FIELD/VALUE answers
201 with `created: true` for a new record, 200 with `created: false` for an update, 404 with
`updateOnly=true` and no match, 300 when the external id matches several records; errors are
lists of `{"message", "errorCode", "fields"}`; an Account cannot be created without Name;
relationship fields take `{"Account__r": {"ExtId__c": value}}`.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

TOKEN = "pat-na1-test-token"
MILESTONE_OBJECT = "2-9000001"


@dataclass
class Property:
    kind: str = "string"  # string, number, date, enumeration, bool
    unique: bool = False
    options: tuple[str, ...] = ()


def company_properties() -> dict[str, Property]:
    return {
        "name": Property(), "domain": Property(), "lifecyclestage": Property(),
        "hubspot_owner_id": Property(), "firstvalue_account_id": Property(unique=True),
        "firstvalue_onboarding_stage": Property("enumeration", options=(
            "awaiting_kickoff", "onboarding", "completed", "ended")),
        "firstvalue_current_milestone": Property(),
        "firstvalue_days_since_kickoff": Property("number"),
        "firstvalue_ttv_days": Property("number"), "firstvalue_open_stall": Property(),
        "firstvalue_handoff_complete": Property("bool"), "firstvalue_owner": Property(),
    }


def milestone_properties(keys: tuple[str, ...]) -> dict[str, Property]:
    return {
        "firstvalue_milestone_id": Property(unique=True), "firstvalue_account_id": Property(),
        "firstvalue_milestone_key": Property("enumeration", options=keys),
        "firstvalue_milestone_name": Property(), "firstvalue_completed_on": Property("date"),
        "firstvalue_days_since_kickoff": Property("number"), "notes": Property(),
    }


class Refusal(Exception):
    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers or {}


@dataclass
class Request:
    method: str
    path: str
    body: Any
    headers: dict[str, str]


class _Server:
    """A threading HTTP server on loopback dispatching JSON requests to `handle`."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("content-length", 0) or 0)
                raw = self.rfile.read(length)
                body = json.loads(raw) if raw else None
                with outer.lock:
                    outer.requests.append(Request(self.command, self.path, body,
                                                  dict(self.headers)))
                    try:
                        status, answer, headers = outer.handle(self.command, self.path, body,
                                                               dict(self.headers))
                    except Refusal as refusal:
                        status, answer, headers = refusal.status, refusal.body, refusal.headers
                data = b"" if answer is None else json.dumps(answer).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_PATCH = do_GET = _serve  # noqa: N815 (http.server's names)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def handle(self, method: str, path: str, body: Any,
               headers: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        raise NotImplementedError

    def start(self):  # noqa: ANN201
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def calls(self, pattern: str) -> list[Request]:
        return [r for r in self.requests if re.search(pattern, r.path)]


@dataclass
class HubSpotObjects:
    properties: dict[str, Property]
    records: dict[str, dict[str, str]] = field(default_factory=dict)

    def find(self, id_property: str | None, value: str) -> str | None:
        if id_property is None or id_property == "hs_object_id":
            return value if value in self.records else None
        return next((rid for rid, props in self.records.items()
                     if props.get(id_property) == value), None)


class HubSpotServer(_Server):
    def __init__(self, milestone_keys: tuple[str, ...] = (
            "account_configured", "data_connected", "first_workflow", "first_value",
            "second_user")) -> None:
        super().__init__()
        self.objects = {"companies": HubSpotObjects(company_properties()),
                        MILESTONE_OBJECT: HubSpotObjects(milestone_properties(milestone_keys))}
        self.associations: set[tuple[str, str, str, str]] = set()
        self.rate_limited = 0  # answer this many next requests with 429
        # Multi-status errors (HubSpot "Error handling"): write the valid inputs of a batch,
        # answer 207 listing the invalid ones under `errors`, instead of refusing it whole.
        self.multi_status = False
        self.retry_after = "7"
        self._ids = itertools.count(1001)

    def add_company(self, **properties: str) -> str:
        record_id = str(next(self._ids))
        self.objects["companies"].records[record_id] = {"hs_object_id": record_id, **properties}
        return record_id

    def company(self, account_id: str) -> dict[str, str]:
        companies = self.objects["companies"]
        return companies.records[companies.find("firstvalue_account_id", account_id) or ""]

    def milestones(self) -> dict[str, dict[str, str]]:
        return self.objects[MILESTONE_OBJECT].records

    def handle(self, method, path, body, headers):
        if headers.get("Authorization", headers.get("authorization")) != f"Bearer {TOKEN}":
            raise Refusal(401, _error("Authentication credentials not found.",
                                      "INVALID_AUTHENTICATION"))
        if self.rate_limited:
            self.rate_limited -= 1
            raise Refusal(429, {"status": "error", "message": "You have reached your secondly "
                                "limit.", "errorType": "RATE_LIMIT", "policyName": "SECONDLY",
                                "correlationId": "c0ffee"}, {"Retry-After": self.retry_after})
        route = urlparse(path).path
        if match := re.fullmatch(r"/crm/v3/objects/([^/]+)/batch/(upsert|update|read)", route):
            objects = self.objects.get(match[1])
            if objects is None:
                raise Refusal(400, _error(f"Unable to infer object type from: {match[1]}",
                                          "OBJECT_TYPE_NOT_FOUND"))
            operation = getattr(self, f"_{match[2]}")
            return operation(match[1], objects, body)
        if match := re.fullmatch(
                r"/crm/v4/associations/([^/]+)/([^/]+)/batch/associate/default", route):
            return self._associate(match[1], match[2], body)
        raise Refusal(404, _error(f"no route {method} {route}", "NOT_FOUND"))

    def _upsert(self, kind, objects, body):
        inputs = body["inputs"]
        errors = []
        if self.multi_status:
            valid = []
            for item in inputs:
                try:
                    self._check_inputs(objects, [item], need_unique=True)
                    valid.append(item)
                except Refusal as refusal:
                    errors.append({**refusal.body, "context": {"ids": [item["id"]]}})
            inputs = valid
        self._check_inputs(objects, inputs, need_unique=True)
        results = []
        for item in inputs:
            record_id = objects.find(item["idProperty"], item["id"])
            new = record_id is None
            if new:
                record_id = str(next(self._ids))
                objects.records[record_id] = {"hs_object_id": record_id,
                                              item["idProperty"]: item["id"]}
            _apply(objects.records[record_id], item["properties"])
            results.append(_result(record_id, objects.records[record_id], new=new))
        if errors:
            return 207, {"status": "COMPLETE", "results": results, "numErrors": len(errors),
                         "errors": errors}, {}
        return 200, {"status": "COMPLETE", "results": results}, {}

    def _update(self, kind, objects, body):
        inputs = body["inputs"]
        self._check_inputs(objects, inputs, need_unique=False)
        missing = [i["id"] for i in inputs if objects.find(i.get("idProperty"), i["id"]) is None]
        if missing:
            raise Refusal(404, {**_error(f"Could not get some {_singular(kind)} objects, they may "
                                         "be deleted or not exist. Check that ids are valid.",
                                         "OBJECT_NOT_FOUND"), "context": {"ids": missing}})
        results = []
        for item in inputs:
            record_id = objects.find(item.get("idProperty"), item["id"])
            _apply(objects.records[record_id], item["properties"])
            results.append(_result(record_id, objects.records[record_id]))
        return 200, {"status": "COMPLETE", "results": results}, {}

    def _read(self, kind, objects, body):
        results, missing = [], []
        for item in body["inputs"]:
            record_id = objects.find(body.get("idProperty"), item["id"])
            if record_id is None:
                missing.append(item["id"])
            else:
                results.append(_result(record_id, objects.records[record_id]))
        answer: dict[str, Any] = {"status": "COMPLETE", "results": results}
        if not missing:
            return 200, answer, {}
        answer.update(numErrors=1, errors=[{**_error(
            f"Could not get some {_singular(kind)} objects, they may be deleted or not exist. "
            "Check that ids are valid.", "OBJECT_NOT_FOUND"), "context": {"ids": missing}}])
        return 207, answer, {}

    def _associate(self, from_type, to_type, body):
        results = []
        for item in body["inputs"]:
            from_id, to_id = item["from"]["id"], item["to"]["id"]
            if from_id not in self.objects[from_type].records or \
                    to_id not in self.objects[to_type].records:
                raise Refusal(400, _error(f"No object of {from_type} {from_id} or {to_type} "
                                          f"{to_id}", "VALIDATION_ERROR"))
            self.associations.add((from_type, from_id, to_type, to_id))
            results.append({"fromObjectTypeId": from_type, "fromObjectId": from_id,
                            "toObjectTypeId": to_type, "toObjectId": to_id, "labels": []})
        return 200, {"status": "COMPLETE", "results": results}, {}

    def _check_inputs(self, objects, inputs, need_unique):
        if len(inputs) > 100:
            raise Refusal(400, _error("Batch input is limited to 100 inputs", "VALIDATION_ERROR"))
        ids = [i["id"] for i in inputs]
        if len(set(ids)) != len(ids):
            raise Refusal(400, _error("Duplicate IDs found in batch input", "VALIDATION_ERROR"))
        problems = []
        for item in inputs:
            id_property = item.get("idProperty")
            if need_unique and (id_property not in objects.properties
                                or not objects.properties[id_property].unique):
                problems.append({"isValid": False, "message": f"{id_property} is not a unique "
                                 "property", "error": "INVALID_ID_PROPERTY", "name": id_property})
            for name, value in item["properties"].items():
                problem = _invalid(objects.properties.get(name), name, value)
                if problem:
                    problems.append(problem)
        if problems:
            raise Refusal(400, _error(f"Property values were not valid: {json.dumps(problems)}",
                                      "VALIDATION_ERROR"))


def _invalid(definition: Property | None, name: str, value: Any) -> dict[str, Any] | None:
    def problem(message: str, error: str) -> dict[str, Any]:
        return {"isValid": False, "message": message, "error": error, "name": name}

    if definition is None:
        return problem(f'Property "{name}" does not exist', "PROPERTY_DOESNT_EXIST")
    if not isinstance(value, str):
        value = str(value)
    if value == "":
        return None
    if definition.kind == "number":
        try:
            float(value)
        except ValueError:
            return problem(f"{value} was not a valid number.", "INVALID_NUMBER")
    if definition.kind == "date" and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return problem(f"{value} was not a valid date.", "INVALID_DATE")
    if definition.kind == "bool" and value not in ("true", "false"):
        return problem(f"{value} was not a valid boolean.", "INVALID_BOOLEAN")
    if definition.kind == "enumeration" and value not in definition.options:
        return problem(f"{value} was not one of the allowed options: "
                       f"{list(definition.options)}", "INVALID_OPTION")
    return None


def _singular(kind: str) -> str:
    return "COMPANY" if kind == "companies" else kind.upper()


def _apply(record: dict[str, str], properties: dict[str, Any]) -> None:
    for name, value in properties.items():
        text = value if isinstance(value, str) else str(value)
        if text == "":
            record.pop(name, None)
        else:
            record[name] = text


def _result(record_id: str, properties: dict[str, str], new: bool | None = None) -> dict:
    result = {"id": record_id, "properties": dict(properties), "archived": False,
              "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z"}
    if new is not None:
        result["new"] = new
    return result


def _error(message: str, category: str) -> dict[str, str]:
    return {"status": "error", "message": message, "category": category,
            "correlationId": "5c8f0b6e-0000-4000-8000-000000000000"}


SF_TOKEN = "00Dxx0000001gEH!AQ4AQtest"


class SalesforceServer(_Server):
    def __init__(self) -> None:
        super().__init__()
        self.fields = {
            "Account": {"Name", "Type", "OwnerId", "Firstvalue_Account_Id__c",
                        "Firstvalue_Onboarding_Stage__c", "Firstvalue_Current_Milestone__c",
                        "Firstvalue_Days_Since_Kickoff__c", "Firstvalue_Ttv_Days__c",
                        "Firstvalue_Open_Stall__c", "Firstvalue_Handoff_Complete__c",
                        "Firstvalue_Owner__c"},
            "Onboarding_Milestone__c": {"Firstvalue_Milestone_Id__c", "Account__c",
                                        "Firstvalue_Milestone_Key__c",
                                        "Firstvalue_Milestone_Name__c",
                                        "Firstvalue_Completed_On__c",
                                        "Firstvalue_Days_Since_Kickoff__c", "Notes__c"}}
        self.external_ids = {"Account": {"Firstvalue_Account_Id__c"},
                             "Onboarding_Milestone__c": {"Firstvalue_Milestone_Id__c"}}
        self.records: dict[str, dict[str, dict[str, Any]]] = {"Account": {},
                                                             "Onboarding_Milestone__c": {}}
        self._ids = itertools.count(1)

    def add_account(self, **fields: Any) -> str:
        record_id = f"001xx{next(self._ids):012d}"
        self.records["Account"][record_id] = dict(fields)
        return record_id

    def handle(self, method, path, body, headers):
        if headers.get("Authorization", headers.get("authorization")) != f"Bearer {SF_TOKEN}":
            raise Refusal(401, [{"message": "Session expired or invalid",
                                 "errorCode": "INVALID_SESSION_ID"}])
        url = urlparse(path)
        match = re.fullmatch(r"/services/data/v\d+\.\d/sobjects/([^/]+)/([^/]+)/([^/]+)", url.path)
        if method != "PATCH" or not match:
            raise Refusal(404, [{"errorCode": "NOT_FOUND",
                                 "message": "The requested resource does not exist"}])
        sobject, external_field, value = match[1], match[2], unquote(match[3])
        if external_field not in self.external_ids.get(sobject, ()):
            raise Refusal(404, [{"errorCode": "NOT_FOUND", "message": "Provided external ID "
                                 f"field does not exist or is not accessible: {external_field}"}])
        fields = self._resolve(sobject, body)
        matches = [rid for rid, rec in self.records[sobject].items()
                   if rec.get(external_field) == value]
        if len(matches) > 1:
            return 300, [f"/services/data/v60.0/sobjects/{sobject}/{rid}" for rid in matches], {}
        if matches:
            self.records[sobject][matches[0]].update(fields)
            return 200, {"id": matches[0], "success": True, "errors": [], "created": False}, {}
        if parse_qs(url.query).get("updateOnly") == ["true"]:
            raise Refusal(404, [{"errorCode": "NOT_FOUND",
                                 "message": "The requested resource does not exist"}])
        if sobject == "Account" and not fields.get("Name"):
            raise Refusal(400, [{"message": "Required fields are missing: [Name]",
                                 "errorCode": "REQUIRED_FIELD_MISSING", "fields": ["Name"]}])
        record_id = f"a0Bxx{next(self._ids):012d}"
        self.records[sobject][record_id] = {external_field: value, **fields}
        return 201, {"id": record_id, "success": True, "errors": [], "created": True}, {}

    def _resolve(self, sobject: str, body: dict[str, Any]) -> dict[str, Any]:
        fields = {}
        for name, value in body.items():
            if name.endswith("__r") and isinstance(value, dict):
                (ext_field, ext_value), = value.items()
                found = [rid for rid, rec in self.records["Account"].items()
                         if rec.get(ext_field) == ext_value]
                if not found:
                    raise Refusal(400, [{"message": f"Foreign key external ID: {ext_value} not "
                                         f"found for field {ext_field} in entity Account",
                                         "errorCode": "INVALID_FIELD", "fields": []}])
                fields[name[:-3] + "__c"] = found[0]
            elif name not in self.fields[sobject]:
                raise Refusal(400, [{"message": f"No such column '{name}' on sobject of type "
                                     f"{sobject}", "errorCode": "INVALID_FIELD", "fields": []}])
            else:
                fields[name] = value
        return fields
