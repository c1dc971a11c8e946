"""Everything is declared in setup.cfg; this file only adds the man pages to the package.

man/ stays the one source of the pages (data_files installs them under share/man for
man(1)). A copy also goes into the built package as dogestry/man/, so `dogestry help` can
show a page wherever no share/man exists: a zipapp or PEX (dist/dogestry.pyz), or an
install whose prefix man(1) does not search.
"""

import glob
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithManPages(build_py):
    def run(self):
        super().run()
        here = os.path.dirname(os.path.abspath(__file__))
        target = os.path.join(self.build_lib, "dogestry", "man")
        os.makedirs(target, exist_ok=True)
        for page in glob.glob(os.path.join(here, "man", "*.[15]")):
            shutil.copyfile(page, os.path.join(target, os.path.basename(page)))


setup(cmdclass={"build_py": BuildPyWithManPages})
