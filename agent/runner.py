"""The agent's loop: heartbeat, long-poll ``next``, run the step under the journal, report.

Reports are idempotent by ``report_id``, and the ids live in the journal: a report retried
after a crash carries the id it had before, so the server applies it once. The final report
is written to the journal before it is sent; a restarted agent sends it again (same id)
rather than running the step again.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any, Callable, Optional

from agent import inventory
from agent.client import Backoff, ServerClient
from agent.config import Config
from agent.download import Downloader
from agent.errors import AgentError, ServerError, StepFailed, StepFinished
from agent.journal import Journal
from agent.steps.context import StepContext
from agent.steps.registry import run_step

log = logging.getLogger("nso-agent")


class Runner:
    def __init__(
        self,
        config: Config,
        client: Optional[ServerClient] = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        token = config.read_token()
        url, ca, insecure = config.server_url, config.ca_path, config.allow_insecure_http
        self.client = client or ServerClient(
            url, token, ca, Backoff(tries=8, cap=60), allow_insecure_http=insecure
        )
        # Progress is informative: one quick retry, so a server that is down (restarting)
        # never holds a step up; final reports keep the patient client above.
        self.progress_client = ServerClient(
            url, token, ca, Backoff(tries=2, cap=1), allow_insecure_http=insecure
        )
        self.downloader = Downloader(url, token, ca, allow_insecure_http=insecure)
        self.journal = Journal(config.journal_file)
        self.sleep = sleep
        self._last_heartbeat = 0.0
        # Whether the job of the step reported last is still active (_send).
        self.job_active = False

    # -- heartbeats -------------------------------------------------------------------

    def heartbeat(self) -> None:
        try:
            self.client.heartbeat(inventory.collect(self.config))
        except AgentError as exc:
            log.warning("heartbeat failed: %s", exc)
        self._last_heartbeat = time.monotonic()

    def heartbeat_if_due(self) -> None:
        if time.monotonic() - self._last_heartbeat >= self.config.heartbeat_interval:
            self.heartbeat()

    # -- reports ----------------------------------------------------------------------

    def _send(self, step_id: int, body: dict[str, Any]) -> Optional[dict[str, Any]]:
        """Send a report; None when the server says the step is finished otherwise."""
        try:
            answer = self.client.report(step_id, body)
            # The job's state after this report: whether the job may hand this node
            # another step (an HA group's members take turns) or has ended.
            job = (answer or {}).get("job") if isinstance(answer, dict) else None
            self.job_active = isinstance(job, dict) and job.get("state") in ("queued", "running")
            return answer
        except StepFinished as exc:
            log.warning("step %s: %s", step_id, exc)
            return None

    def _send_final(self, step_id: int) -> None:
        """Send the journal's final report. A success whose result the server refuses
        (``result_invalid``: an agent and a server that disagree on the protocol) is
        reported as a failure with the server's reason, which the server always takes:
        resending the same refused report would hold the job on this step for ever."""
        entry = self.journal.entry
        if entry is None or entry.final_report is None:
            return
        try:
            self._send(step_id, entry.final_report)
        except ServerError as exc:
            if exc.code != "result_invalid" or entry.final_report.get("state") != "succeeded":
                raise
            log.error("step %s: the server refused its result: %s", step_id, exc)
            refused = {
                "report_id": entry.report_id("final-refused"),
                "state": "failed",
                "progress": 100,
                "message": f"the step ended, but the server refused its result: {exc}"[:2000],
                "log_tail": entry.final_report.get("log_tail", ""),
                "result": {"changed": True} if _changed(entry.final_report) else {},
            }
            entry.final_report = refused
            self.journal.save()
            self._send(step_id, refused)

    def flush_pending(self) -> None:
        """Resend a final report that a crash kept from reaching the server."""
        entry = self.journal.entry
        if entry is None or entry.final_report is None:
            return
        log.info("resending the final report of step %s (%s)", entry.step_id, entry.name)
        self._send_final(entry.step_id)
        self.journal.clear()

    def _progress_reporter(self, step_id: int) -> Callable[[int, str], None]:
        counter = [0]

        def report(percent: int, message: str) -> None:
            entry = self.journal.entry
            if entry is None:
                return
            counter[0] += 1
            purpose = f"progress-{entry.attempt}-{counter[0]}"
            body = {
                "report_id": entry.report_id(purpose),
                "state": "running",
                "progress": max(0, min(99, int(percent))),
                "message": message.replace("\x00", "")[:500],
            }
            self.journal.save()
            try:
                self.progress_client.report(step_id, body)
            except (ServerError, StepFinished) as exc:  # informative: never fail a step for it
                log.warning("progress report failed: %s", exc)

        return report

    # -- steps ------------------------------------------------------------------------

    def execute(self, step: dict[str, Any]) -> dict[str, Any]:
        """Run one step handed out by the server and report its outcome; the final report."""
        step_id = int(step["id"])
        if self.journal.entry is not None and self.journal.entry.step_id != step_id:
            self.flush_pending()
            self.journal.clear()
        entry = self.journal.begin(step)
        if entry.final_report is not None:
            # Finished before a crash; the server handed it out again because our report
            # never arrived. Send the same report, do not run the step again.
            self._send_final(step_id)
            pending = entry.final_report
            self.journal.clear()
            return pending
        log.info("step %s %s (attempt %s)", step_id, step["name"], entry.attempt)
        running = {
            "report_id": entry.report_id(f"running-{entry.attempt}"),
            "state": "running",
            "progress": 0,
            "message": f"{step['name']} started (attempt {entry.attempt})",
        }
        self.journal.save()
        if self._send(step_id, running) is None:
            self.journal.clear()
            return running
        ctx = StepContext(
            self.config,
            step,
            self.journal,
            self.downloader,
            on_progress=self._progress_reporter(step_id),
        )
        began = time.monotonic()
        try:
            result = run_step(ctx)
            final: dict[str, Any] = {
                "state": "succeeded",
                "progress": 100,
                "message": f"{step['name']} done in {time.monotonic() - began:.1f} s",
                "result": result,
            }
        except StepFailed as exc:
            message = str(exc).replace("\x00", "")  # NSO output may hold NUL: never sent
            final = {"state": "failed", "message": message[:2000], "result": exc.result}
        except Exception as exc:  # a bug or an unexpected condition: still report it
            ctx.log(traceback.format_exc())
            final = {
                "state": "failed",
                "message": f"nso-agent error in {step['name']}: {type(exc).__name__}: {exc}"[:2000],
                "result": {},
            }
        final["log_tail"] = ctx.log_tail()
        final["nso_seconds"] = round(ctx.nso.seconds_in_nso(), 3)
        final["report_id"] = entry.report_id("final")
        entry.final_report = final
        self.journal.save()
        self._send_final(step_id)
        final = entry.final_report or final  # a refused result became a failure
        self.journal.clear()
        log.info("step %s %s: %s", step_id, step["name"], final["state"])
        return final

    def once(self, wait: Optional[int] = None) -> Optional[dict[str, Any]]:
        """At most one step: heartbeat, ask for work once, run it. The final report or None."""
        self.flush_pending()
        self.heartbeat()
        step = self.client.next_step(self.config.poll_wait if wait is None else wait)
        if step is None:
            return None
        final = self.execute(step)
        self.heartbeat()
        return final

    def run_forever(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        # in_job: the job of the step this agent ran last is still active and may hand it
        # another soon (an HA group's members take turns); just_ran: that step has just
        # ended; started: a final report a crash kept is sent, and the node reported.
        in_job = just_ran = started = False
        while not should_stop():
            try:
                if not started:
                    # In the loop: with the server away, the service waits and tries again
                    # rather than exit, and be restarted, until it is back.
                    self.flush_pending()
                    self.heartbeat()
                    started = True
                self.heartbeat_if_due()
                # Right after a step, ask for the next one without waiting. While the job
                # goes on, keep listening rather than collect the inventory at once (about
                # a second in which a step handed to this node would wait); once it has
                # ended, report the node as it is now.
                step = self.client.next_step(0 if just_ran else self.config.poll_wait)
                if step is not None:
                    self.job_active = False
                    self.execute(step)
                    just_ran, in_job = True, self.job_active
                    continue
                if just_ran:
                    just_ran = False
                    if not in_job:
                        self.heartbeat()  # the job is done: the node as it is now
                    continue
                if in_job:
                    self.heartbeat()  # a whole wait brought nothing
                    in_job = False
                elif self.client.retry_after:
                    # The server had no place for this poll to wait: come back when it said,
                    # not at once (a fleet polling in a loop would be the overload itself).
                    self.sleep(float(self.client.retry_after))
            except ServerError as exc:
                # The client retried already; wait a little and keep serving.
                log.error("%s", exc)
                self.sleep(min(60.0, max(1.0, float(self.config.poll_wait))))


def _changed(report: dict[str, Any]) -> bool:
    """Whether a success the server refused had changed the node: a patch applied or
    removed (``changed``), a real NED migration. The failure sent instead says so, or the
    job would end as if nothing had happened to it."""
    result = report.get("result")
    if not isinstance(result, dict):
        return False
    migration = result.get("ned_migration")
    if isinstance(migration, dict) and migration.get("dry_run") is not True:
        devices = migration.get("devices")
        shown = devices if isinstance(devices, list) else []
        moved = any(not isinstance(d, dict) or d.get("state") != "already" for d in shown)
        return moved or migration.get("truncated") is not False
    return result.get("changed") is True
