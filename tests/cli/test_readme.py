"""The README works as written: its shell blocks run, in order, as one bash script against a fresh database
(the commands a new user types, the venv's `pipeline` first on PATH as `source .venv/bin/activate` puts it),
then its SQL blocks run against what they left.

What the README calls the user's own (`dores.csv`, `propostas/`, `notas.md`, the tables `leads` and
`emails`) the test provides. The lines it cannot run are in SKIPPED, each with the reason; `pipeline serve`
runs in the background on a free port for the `curl` lines, which fail here on an HTTP error."""

from __future__ import annotations

import csv
import re
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from pipeline.db import connect
from tests.conftest import ROOT, cli_env

README = ROOT / "README.md"
SAMPLE = ROOT / "pipeline" / "data" / "dores_exemplo.csv"

SKIPPED = {  # the start of a README line: why the test does not run it
    "python3 -m venv": "creates the venv the test runs in (its bin/ is first on PATH instead)",
    "pip install": "needs the package index (network)",
    "bash scripts/test.sh": "the whole test suite",
    "export DATABASE_URL=": "a placeholder Supabase URL; the test's fresh database is set instead",
    "pipeline run": "the daemon runs until stopped (tests/cli/test_daemon.py runs it)",
    "pipeline reembed --model NAME": "NAME is a placeholder, and another model needs the network",
    "pipeline reembed --backend onnx-int8": "exports the model to ONNX and re-embeds every row (tests/cli/test_reembed.py)",
}


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.M | re.S)


def script(port: int) -> str:
    """The README's shell blocks as one bash script: skipped lines commented out, `serve` in the background."""
    lines = [
        "set -euo pipefail",
        "trap 'echo \"README command failed (exit $?): $BASH_COMMAND\" >&2' ERR",
        "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT",
    ]
    served = False
    for block in blocks("bash"):
        for line in block.splitlines():
            reason = next((why for start, why in SKIPPED.items() if line.startswith(start)), None)
            if reason:
                lines.append(f"# skipped ({reason}): {line}")
            elif line.startswith("pipeline serve"):
                lines.append(line.replace("--port 8000", f"--port {port}").split("#")[0] + " &")
                served = True
            elif line.startswith("curl"):
                assert served, "a curl line before `pipeline serve`"
                lines.append(
                    f"for _ in $(seq 240); do curl -sf localhost:{port}/healthz >/dev/null && break; sleep 0.5; done"
                )
                lines.append(
                    line.replace("localhost:8000", f"localhost:{port}").replace(
                        "curl -s ", "curl -s --fail-with-body ", 1
                    )
                )
            else:
                lines.append(line)
    return "\n".join(lines) + "\n"


def own_files(directory: Path, db_url: str) -> None:
    """What the README calls the user's own: a CSV of dores, documents, and the tables leads and emails."""
    with SAMPLE.open(encoding="utf-8", newline="") as source:
        rows = list(csv.reader(source))[:41]
    with (directory / "dores.csv").open("w", encoding="utf-8", newline="") as target:
        csv.writer(target).writerows(rows)  # the header and 40 dores
    (directory / "propostas").mkdir()
    (directory / "propostas" / "acme.md").write_text(
        "---\ncliente: acme\ntipo: proposta\n---\n# Proposta ACME\n\nConfirmação de consultas por WhatsApp, "
        "com lembrete um dia antes e lista de espera para os horários que vagam.\n",
        encoding="utf-8",
    )
    (directory / "notas.md").write_text("Reunião com a transportadora sobre rotas de entrega.\n", encoding="utf-8")
    hot = ["Temos orçamento aprovado e queremos começar este mês", "Precisamos automatizar o atendimento já",
           "O diretor aprovou o projeto, quando podemos assinar?", "Queremos uma proposta para implantar agora",
           "Nossa equipe não dá conta do atendimento, precisamos de ajuda urgente",
           "Fechamos o orçamento do semestre e isso é prioridade"]  # fmt: skip
    cold = ["Só estou pesquisando preços por curiosidade", "Talvez no ano que vem, sem orçamento agora",
            "Recebi o e-mail mas não tenho interesse no momento", "Apenas conhecendo o mercado, sem previsão",
            "Não temos verba e nem equipe para isso", "Mande material, quem sabe um dia"]  # fmt: skip
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "create table public.leads (id bigint generated always as identity primary key, empresa text, "
            "assunto text, mensagem text, status text)"
        )
        conn.execute("create table public.emails (id bigint primary key, assunto text, corpo text, caixa text)")
        for n, (company, status, texts) in enumerate(
            (c, s, t) for c in ("Clínica Sorriso", "Transportes Rápido") for s, t in (("quente", hot), ("frio", cold))
        ):
            for text in texts:
                conn.execute(
                    "insert into public.leads (empresa, assunto, mensagem, status) values (%s, %s, %s, %s)",
                    (company, f"contato {n}", text, status),
                )
        conn.execute("insert into public.emails values (1, 'Orçamento', 'Podemos conversar na terça?', 'vendas')")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_the_readme_runs_as_written(empty_db_url: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    own_files(work, empty_db_url)
    (work / "readme.sh").write_text(script(free_port()), encoding="utf-8")
    env = cli_env(empty_db_url, PIPELINE_DATA_DIR=str(tmp_path / "data"))
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"  # as `source .venv/bin/activate`
    env.pop("PIPELINE_API_TOKEN", None)
    ran = subprocess.run(["bash", "readme.sh"], cwd=work, env=env, capture_output=True, text=True, timeout=1200)
    assert ran.returncode == 0, f"{ran.stderr[-4000:]}\n--- stdout ---\n{ran.stdout[-2000:]}"
    assert "sync: " in ran.stdout and "imported 40 dores" in ran.stdout
    assert '"score"' in ran.stdout  # /ml/score-lead answered (curl --fail-with-body: a 4xx fails the script)
    assert "segmento " in ran.stdout  # segment-of
    for name in ("dores.json", "dores_seg.csv", "dores_segmentos.csv"):
        assert (work / name).stat().st_size > 0, name

    statements = [line.split(";")[0] for block in blocks("sql") for line in block.splitlines() if line.strip()]
    assert len(statements) >= 9
    with connect(empty_db_url) as conn:
        query = conn.execute("select embedding from dores where id = 42").fetchone()["embedding"]
        for statement in statements:
            rows = conn.execute(statement.replace(":query_embedding", "%(q)s"), {"q": query}).fetchall()
            assert rows, f"no rows: {statement}"
