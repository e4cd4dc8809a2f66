"""report.md as one self-contained HTML file: the same content, figures embedded as data URIs, the
style inline, so it opens from a CI artifact or a mail attachment with no other file beside it."""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import markdown

STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #1b1b1b; }
h1, h2, h3 { line-height: 1.25; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
code { background: #f3f3f3; padding: 0 .2em; border-radius: 3px; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; }
img { max-width: 100%; display: block; margin: 1em 0; border: 1px solid #eee; }
"""
IMAGE = re.compile(r'src="([^":/]+\.png)"')


def _escape_text(md: str) -> str:
    """'<' and '&' outside code as text: the report quotes framework messages ('<lambda>', '<NVML>'),
    which Markdown would pass through as HTML tags the browser hides."""
    out = []
    for n, part in enumerate(re.split(r"(```.*?```|`[^`\n]*`)", md, flags=re.S)):
        out.append(part if n % 2 else part.replace("&", "&amp;").replace("<", "&lt;"))
    return "".join(out)


def to_html(md: str, folder: Path, title: str) -> str:
    """MD rendered (tables, code) with every PNG it names read from FOLDER and embedded."""
    body = markdown.markdown(_escape_text(md), extensions=["tables", "fenced_code", "sane_lists"])

    def embed(match: re.Match) -> str:
        """Only the report's own figures: a name quoted from a run file ('![x](y.png)' in a telemetry
        message) that is no file of FOLDER stays as written, never a crash."""
        path = folder / match.group(1)
        if not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'src="data:image/png;base64,{data}"'

    body = IMAGE.sub(embed, body)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")
