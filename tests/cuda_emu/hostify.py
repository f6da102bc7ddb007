#!/usr/bin/env python3
"""Rewrites a kernels/cuda/*.cu source into C++ the CPU emulator compiles
(tests/cuda_emu/README.md). Three rewrites, nothing else:

  kernel<<<grid, block, shared, stream>>>(args)
      -> ::deco_emu::launch(grid, block, shared, stream)(kernel, "kernel")(args)
  extern __shared__ [__align__(N)] T name[];
      -> T* name = reinterpret_cast<T*>(::deco_emu::dynamic_shared());
  __shared__ [__align__(N)] T name[...];
      -> [__align__(N)] static T name[...]; ::deco_emu::shared_var(name);

One thread runs a block at a time, so a function-local static is the
block's shared memory; shared_var fills it with 0xff bytes when the block's
first thread declares it. A #line directive keeps compiler messages
pointing at the .cu file.

Usage: hostify.py IN.cu OUT.cpp
"""
import re
import sys


def callee_start(text, end):
    """Index where the kernel expression ending at `end` (just before <<<) begins:
    an identifier path with template arguments (nested <...> allowed)."""
    i = end
    depth = 0
    while i > 0:
        ch = text[i - 1]
        if ch == '>':
            depth += 1
        elif ch == '<':
            if depth == 0:
                break
            depth -= 1
        elif depth == 0 and not (ch.isalnum() or ch in '_:'):
            break
        i -= 1
    return i


def rewrite_launches(text):
    out = []
    pos = 0
    while True:
        open_ = text.find('<<<', pos)
        if open_ < 0:
            out.append(text[pos:])
            return ''.join(out)
        close = text.find('>>>', open_)
        if close < 0 or not text[close + 3:].lstrip().startswith('('):
            raise SystemExit(f'hostify: a <<< without a matching >>>( at offset {open_}')
        start = callee_start(text, open_)
        kernel = text[start:open_].strip()
        if not kernel:
            raise SystemExit(f'hostify: no kernel name before <<< at offset {open_}')
        config = text[open_ + 3:close]
        out.append(text[pos:start])
        name = ' '.join(kernel.split()).replace('"', '')
        out.append(f'::deco_emu::launch({config})({kernel}, "{name}")')
        pos = close + 3


EXTERN_SHARED = re.compile(
    r'extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([A-Za-z_][\w:<>, ]*?)\s+([A-Za-z_]\w*)\s*\[\s*\]\s*;')
SHARED = re.compile(
    r'__shared__\s+(__align__\(\s*\d+\s*\)\s+)?([^;]*?)\s+([A-Za-z_]\w*)\s*((?:\[[^\]]*\])*)\s*;')


def rewrite_shared(text):
    text = EXTERN_SHARED.sub(
        lambda m: f'{m.group(1)}* {m.group(2)} = reinterpret_cast<{m.group(1)}*>(::deco_emu::dynamic_shared());',
        text)
    # An __align__ goes first: C++ takes alignas before `static`, not after.
    text = SHARED.sub(lambda m: f'{m.group(1) or ""}static {m.group(2)} {m.group(3)}{m.group(4)}; '
                                f'::deco_emu::shared_var({m.group(3)});', text)
    if '__shared__' in text.replace('extern __shared__', ''):
        raise SystemExit('hostify: a __shared__ declaration it cannot rewrite is left')
    return text


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, encoding='utf-8') as f:
        text = f.read()
    text = rewrite_shared(rewrite_launches(text))
    with open(dst, 'w', encoding='utf-8') as f:
        f.write(f'#line 1 "{src}"\n')
        f.write(text)


if __name__ == '__main__':
    main()
