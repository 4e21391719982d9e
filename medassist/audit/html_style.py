"""The one stylesheet of the project's HTML reports (model cards, the monitoring report)."""

REPORT_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#1d1d1f;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.88em}
th,td{border:1px solid #ccd;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#eef1f6}
code{background:#f3f3f6;padding:0 .2em;border-radius:3px;font-size:.92em;word-break:break-all}
.alert{background:#fdecea;border-left:4px solid #c62828;padding:.5em .8em;margin:.8em 0}
.warn{background:#fff4e5;border-left:4px solid #e07b00;padding:.5em .8em;margin:.8em 0}
.ok{background:#e8f5e9;border-left:4px solid #2e7d32;padding:.5em .8em;margin:.8em 0}
figure{margin:1em 0}figcaption{font-size:.85em;color:#555}
img{max-width:100%}
h2{border-bottom:1px solid #dde;padding-bottom:.2em;margin-top:1.6em}
"""
