"""Screenshot of a reproduction report in headless Chromium, to check its layout as a reader sees it.

    apt-get install -y chromium                                   # Debian's package
    python benchmarks/report_screenshot.py results/reproduce/report.html --png report.png
    python benchmarks/report_screenshot.py report.html --png top.png --width 1400 --height 1800

The page is self-contained (figures embedded), so Chromium needs no network and no server. The PNG is
``--width`` x ``--height`` CSS pixels of the page's top (a taller ``--height`` shows more of it).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser():
    """The path of a Chromium executable on ``PATH``; FileNotFoundError naming the package otherwise."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError(f"none of {', '.join(BROWSERS)} is on PATH; install Debian's 'chromium' package "
                            "(apt-get install -y chromium)")


def screenshot(html_path, png_path, width=1400, height=4000, browser=None):
    """Renders ``html_path`` headless at ``width`` x ``height`` CSS pixels into ``png_path``; returns it."""
    if not os.path.isfile(html_path):
        raise FileNotFoundError(f"no report at {html_path!r}")
    browser = browser or find_browser()
    with tempfile.TemporaryDirectory() as profile:  # a throw-away profile: no state from other runs
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                   f"--user-data-dir={profile}", f"--window-size={width},{height}",
                   f"--screenshot={os.path.abspath(png_path)}", "file://" + os.path.abspath(html_path)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
    if not os.path.isfile(png_path):
        raise RuntimeError(f"{browser} wrote no screenshot to {png_path!r}")
    return png_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("html", help="the report.html to render")
    parser.add_argument("--png", default="report.png", help="output PNG (default: %(default)s)")
    parser.add_argument("--width", type=int, default=1400, help="viewport width in CSS pixels (default: %(default)s)")
    parser.add_argument("--height", type=int, default=4000,
                        help="viewport height in CSS pixels (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        print(screenshot(args.html, args.png, args.width, args.height))
    except (FileNotFoundError, RuntimeError, subprocess.CalledProcessError) as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
