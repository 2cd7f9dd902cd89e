"""Sending a push action made of several requests: a connector's ``steps``.

The steps go out in order, each rendered from what its templates see — ``record``,
``externalId`` (an update's or delete's; a create's once its id step has answered)
and ``steps``, what each earlier step captured — and skipped when its ``when`` is not
true. A body that reads ``$steps`` is made as its step goes out, and checked then. A
step that fails fails the action, its error naming the step (message and
``details.step``, which reach the audit row).

No duplicates on retry (docs/decisions.md, "Steps: a create resumes where it
stopped"): once a create's id step has answered, the record is linked to the id it
answered, durably (``Links.note_steps_done``, synchronous commit), together with the
steps done so far and their captures — before the next step is sent, and recorded
again after each step. A failure after that leaves the record linked; the retry finds
the steps done on its link and resumes after them (:meth:`ActionSteps.create` with
``done``) instead of creating a second remote record; the push that sends the last
step links the record as any create does (hash, push mark), which ends the resume.

An update's and a delete's steps are sent again from the first on a retry (an update
re-reads what it reads; a step of a delete answered 404 or 410 counts as done: the
thing is gone already). A 404 of an update's first step says the remote record is
gone (created again, as for a one-request update); a 404 of a later step is an error.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from services.pusher.outcome import PushOutcome
from services.pusher.plan import CallPlan
from shared.connector import CallSpec
from shared.connector.step_compiler import STEPS
from shared.errors import RecordBusy, RemoteRejected, SyncError
from shared.http import Response
from shared.storage.links import Link

if TYPE_CHECKING:
    from services.pusher.push import RecordPush

#: What a delete's step may answer when the thing it deletes is gone already.
GONE = frozenset({404, 410})


def named(exc: SyncError, step: CallSpec, action: str) -> SyncError:
    """``exc`` saying which step of ``action`` failed (message and ``details.step``)."""
    if exc.details.get("step") != step.name:
        exc.message = f"step {step.name!r} of the {action}: {exc.message}"
        exc.details = {**exc.details, "step": step.name}
    return exc


def gone(exc: RemoteRejected, call: CallSpec) -> bool:
    """Whether a 404 from ``call`` says its remote record is gone: the call itself
    answered it, or, for steps, the first step (a later step's 404 is about something
    else: the record's address, its ETag's resource)."""
    if exc.http_status != 404:
        return False
    return not call.steps or exc.details.get("step") in (None, call.steps[0].name)


class ActionSteps:
    """Sends the steps of ``push``'s actions (see the module docstring)."""

    def __init__(self, push: RecordPush) -> None:
        self.push = push
        self.planner = push.planner

    async def create(self, plan: CallPlan, record: dict[str, Any], link: Link, *,
                     done: dict[str, Any] | None = None) -> PushOutcome:
        """Send a create's steps — after those in ``done`` (step → captures), when an
        earlier attempt stopped after its id step: the record is then linked already —
        and link the record. Raises what a step raises, named."""
        push, call = self.push, plan.call
        data: dict[str, Any] = {"record": record, "steps": dict(done or {})}
        external_id = None
        if done is not None:
            external_id = data["externalId"] = link.external_id
            push.details["resumed"] = (
                f"an earlier attempt stopped after the step(s) {', '.join(done) or 'none'}; "
                f"the create goes on after them for {external_id}")
        self.planner.check_steps(plan)
        main: Response | None = None
        remaining = [s for s in call.steps
                     if done is None or (s.name not in done and s is not call.id_step)]
        for number, step in enumerate(remaining, start=1):
            try:
                if not step.runs(data):
                    continue
                if step is call.id_step:
                    response, external_id = await self._id_step(plan, step, record, data)
                    data["externalId"] = external_id
                    main = response
                else:
                    response = await self._send(plan, step, data, external_id)
            except SyncError as exc:
                raise named(exc, step, "create") from None
            data["steps"][step.name] = self.planner.captured(step, response)
            if external_id is not None and number < len(remaining):
                await self._note(external_id, data["steps"])
        assert external_id is not None  # the id step takes no when, and was sent or done
        sent = plan.body
        answer = main.body if main is not None else None
        await push._store_link(external_id, plan.digest, "created",
                               pull_hash=await push._pull_hash(external_id, sent, answer))
        return PushOutcome("created", external_id, main.status if main else None,
                           push.details)

    async def run(self, plan: CallPlan, record: dict[str, Any] | None) -> Response | None:
        """Send an update's or a delete's steps, from the first; the answer of its main
        step (``None`` when it was skipped). Raises what a step raises, named."""
        data: dict[str, Any] = {"record": record, "externalId": plan.external_id,
                                "steps": {}}
        if plan.bodies:
            self.planner.check_steps(plan)
        main = plan.call.main_step
        answer: Response | None = None
        for step in plan.call.steps:
            try:
                if not step.runs(data):
                    continue
                response = await self._send(plan, step, data, plan.external_id,
                                            accept=GONE if plan.action == "delete"
                                            else frozenset())
            except SyncError as exc:
                raise named(exc, step, plan.action) from None
            if response.status in GONE and plan.action == "delete":
                self.push.details.setdefault("alreadyGone", []).append(step.name)
            data["steps"][step.name] = self.planner.captured(step, response)
            if step is main:
                answer = response
        return answer

    async def _id_step(self, plan: CallPlan, step: CallSpec, record: dict[str, Any],
                       data: dict[str, Any]) -> tuple[Response, str]:
        """Send a create's id step (noted on the link first, as a one-request create is);
        its answer and the id it gives — of the record it made, or of the one its
        idempotency key made earlier / a 409 names (the create then goes on with that
        record: the later steps are sent for it)."""
        step_plan = await self._answered(self.planner.step(plan, step, None), data)
        response = await self.push._send_create(step_plan, record, data)
        self.push.details.setdefault("steps", []).append(
            f"{step.name}: {self.push.details['request']}")
        existing = self.planner.existing(step_plan, response)
        if existing is not None:
            self.push.details["replayed"] = existing.how
            return response, existing.external_id
        return response, self.planner.created_id(step, response)

    async def _send(self, plan: CallPlan, step: CallSpec, data: dict[str, Any],
                    external_id: str | None, accept: frozenset[int] = frozenset()
                    ) -> Response:
        push = self.push
        step_plan = await self._answered(self.planner.step(plan, step, external_id), data)
        request = await push._with_links(
            lambda: self.planner.request(step_plan, data, push.context))
        response = await push._transmit(request, accept=accept)
        push.details.setdefault("steps", []).append(f"{step.name}: {push.details['request']}")
        return response

    async def _answered(self, step_plan: CallPlan, data: dict[str, Any]) -> CallPlan:
        """``step_plan`` with its body made now when it reads the captures of the steps
        before it (``$steps``); it is checked against the request schema as it is sent."""
        step = step_plan.call
        if not step.reads_answers:
            return step_plan
        assert step.body is not None
        body = step.body
        push = self.push
        made = await push._with_links(lambda: body.apply(
            data.get("record") or {}, push.context, {STEPS: data[STEPS]}))
        return dataclasses.replace(step_plan, body=made)

    async def _note(self, external_id: str, done: dict[str, Any]) -> None:
        """Link the record to ``external_id`` with the steps ``done``, durably, before
        the next step goes out."""
        push = self.push
        if not await push.links.note_steps_done(push.instance_id, push.entity,
                                                push.record_id, push.message_id,
                                                external_id=external_id, done=done):
            raise RecordBusy(f"{push.entity} {push.record_id} was taken over by another "
                             "delivery between two steps of its create")

