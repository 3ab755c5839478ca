"""Write README.md from nbs/index.ipynb (Quarto, which nbdev_readme needs, is not installable here).

Markdown cells are copied; code cells without a `#|` hide/export directive are shown with their text outputs.
`python .ci/readme.py` writes README.md; `python .ci/readme.py --check` exits 1 if README.md is out of date."""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def render(nb_path=ROOT / 'nbs' / 'index.ipynb'):
    nb = json.loads(Path(nb_path).read_text(encoding='utf-8'))
    out = []
    for c in nb['cells']:
        src = ''.join(c['source']).strip()
        if not src: continue
        if c['cell_type'] == 'markdown':
            m = re.match(r'# (.+)\n+> (.+)', src)
            if m and not out: src = f"# {m[1]}\n\n> {m[2]}" + src[m.end():]
            out.append(src)
        elif c['cell_type'] == 'code':
            if re.search(r'^#\|\s*(hide|export|exporti|eval:\s*false)', src, re.M): continue
            out.append(f"```python\n{src}\n```")
            text = ''.join(''.join(o.get('text', '')) for o in c.get('outputs', []) if o.get('output_type') == 'stream').strip()
            if text: out.append(f"    " + text.replace('\n', '\n    '))
    return "<!-- generated from nbs/index.ipynb by .ci/readme.py: edit the notebook, not this file -->\n\n" + '\n\n'.join(out) + '\n'

if __name__ == '__main__':
    text = render()
    if '--check' in sys.argv:
        ok = (ROOT / 'README.md').read_text(encoding='utf-8') == text
        print('README.md is up to date' if ok else 'README.md is out of date: run python .ci/readme.py')
        sys.exit(0 if ok else 1)
    (ROOT / 'README.md').write_text(text, encoding='utf-8')
