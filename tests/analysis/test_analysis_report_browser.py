"""The HTML report in a real browser: headless Debian Chromium loads every image, no errors.

A copy of the report gets a small script that, once the page has loaded, writes the state of
every <img> (complete, naturalWidth) and every error seen (window errors, console.error, image
load errors) into a <pre id="browser-check"> element; ``chromium --dump-dom`` prints the DOM,
and the test reads that element back. A second page with a broken image proves the check can
fail.

Chromium is Debian's ``chromium`` package (``apt-get install -y chromium``). Without it the
test is skipped, except under ``CI=true``, where it fails: CI must not pass by skipping it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from analysis.load import load_results
from analysis.report import write_report
from tests.analysis import synth

CHROMIUM = Path("/usr/bin/chromium")

_PROBE_HEAD = """<script>
window.__errors = [];
window.addEventListener("error", function (event) {
  var target = event.target || {};
  window.__errors.push(target.tagName === "IMG" ? "image failed: " + target.alt
                                                : String(event.message));
}, true);
var originalError = console.error;
console.error = function () {
  window.__errors.push("console.error: " + Array.prototype.join.call(arguments, " "));
  originalError.apply(console, arguments);
};
</script>"""

_PROBE_BODY = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.map.call(document.images, function (img) {
    return {alt: img.alt, complete: img.complete, naturalWidth: img.naturalWidth,
            naturalHeight: img.naturalHeight};
  });
  var out = document.createElement("pre");
  out.id = "browser-check";
  out.textContent = JSON.stringify({images: images, errors: window.__errors});
  document.body.appendChild(out);
});
</script>"""

_RESULT = re.compile(r'<pre id="browser-check">(.*?)</pre>', re.DOTALL)


def _chromium() -> Path:
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    message = f"{CHROMIUM} not found; install Debian's chromium (apt-get install -y chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI=true, so this test must run")
    pytest.skip(message)


def _with_probe(html: str) -> str:
    html = html.replace("<head>", "<head>\n" + _PROBE_HEAD, 1)
    return html.replace("</body>", _PROBE_BODY + "\n</body>", 1)


def _check_in_browser(page: Path, profile: Path) -> tuple[dict[str, Any], str]:
    """Load ``page`` in headless Chromium; returns the probe result and Chromium's stderr."""
    command = [
        str(_chromium()), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
        # No DNS at all: the page is a file:// URL with data: images; without these Chromium
        # still resolves hosts and tries DNS-over-HTTPS at start (seen under strace).
        "--host-resolver-rules=MAP * ~NOTFOUND", "--dns-over-https-mode=off",
        "--disable-features=AsyncDns,DnsOverHttps,OptimizationHints,MediaRouter,Translate",
        "--disable-domain-reliability", "--no-pings", "--no-default-browser-check",
        "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
        "--dump-dom", page.as_uri(),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    match = _RESULT.search(completed.stdout)
    assert match, (
        f"no probe result in the DOM (exit {completed.returncode});\n"
        f"stderr:\n{completed.stderr[-3000:]}\nstdout head:\n{completed.stdout[:500]}"
    )
    text = match.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
    return json.loads(text.replace("&amp;", "&")), completed.stderr


def _console_lines(stderr: str) -> list[str]:
    """Chromium's log lines about page console messages and uncaught errors."""
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


def test_report_images_load_in_chromium(small_sweep: Path, tmp_path: Path) -> None:
    _chromium()
    for run in ("p0", "p1"):  # the side-by-side attention figure joins the report
        synth.write_attention(small_sweep / "runs" / run, patch_size=4 * (1 + int(run[1])))
    report = write_report(load_results(small_sweep), tmp_path / "report.html")
    page = tmp_path / "report_checked.html"
    page.write_text(_with_probe(report.read_text(encoding="utf-8")), encoding="utf-8")

    result, stderr = _check_in_browser(page, tmp_path / "profile")

    assert [image["alt"] for image in result["images"]] == [
        "knn overlay", "knn runs", "collapse", "attention"]
    for image in result["images"]:
        assert image["complete"] and image["naturalWidth"] > 0 and image["naturalHeight"] > 0, \
            image
    assert result["errors"] == []
    assert _console_lines(stderr) == []


def test_browser_check_detects_broken_images_and_console_errors(tmp_path: Path) -> None:
    _chromium()
    page = tmp_path / "broken.html"
    page.write_text(_with_probe(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>t</title></head><body>"
        "<img alt='broken' src='data:image/png;base64,bm90IGEgcG5n'>"
        "<script>console.error('boom')</script></body></html>"
    ))
    result, stderr = _check_in_browser(page, tmp_path / "profile")
    assert result["images"][0]["naturalWidth"] == 0
    assert sorted(result["errors"]) == ["console.error: boom", "image failed: broken"]
    assert any('"boom"' in line for line in _console_lines(stderr))


def test_missing_chromium_skips_locally_and_fails_under_ci(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(f"{__name__}.CHROMIUM", tmp_path / "no_chromium")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        _chromium()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="apt-get install"):
        _chromium()
