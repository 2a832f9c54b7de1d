# -*- coding: utf-8 -*-
"""One error base: every error class of module_utils derives from errors.PgBackupError, so a module catches
one class (module_base.EXPLAINED_ERRORS) and no new error slips past as a traceback."""

import importlib
import inspect
import os

from ansible_collections.modulo.pgbackup.plugins.module_utils import errors, module_base
from ansible_collections.modulo.pgbackup.plugins.module_utils.wal import errors as walerrors

MODULE_UTILS = os.path.join(os.path.dirname(errors.__file__))


def test_every_error_class_of_module_utils_derives_from_the_one_base():
    checked = []
    for filename in sorted(os.listdir(MODULE_UTILS)):
        if not filename.endswith('.py') or filename == '__init__.py':
            continue
        name = filename[:-3]
        module = importlib.import_module('ansible_collections.modulo.pgbackup.plugins.module_utils.' + name)
        for attr, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, Exception) and value.__module__ == module.__name__:
                assert issubclass(value, errors.PgBackupError), '%s.%s' % (name, attr)
                checked.append(attr)
    assert len(checked) >= 20 and 'RepositoryError' in checked and 'LockBusy' in checked


def test_the_wal_package_stays_alone_on_the_host_and_its_errors_are_still_explained():
    package = os.path.join(MODULE_UTILS, 'wal')
    for filename in sorted(os.listdir(package)):
        if filename.endswith('.py'):
            with open(os.path.join(package, filename)) as handle:
                imports = [line for line in handle if line.startswith(('import ', 'from '))]
            assert not [line for line in imports if 'ansible' in line], (filename, imports)
    assert module_base.EXPLAINED_ERRORS == (errors.PgBackupError, walerrors.WalArchiveError)
    assert issubclass(walerrors.FatalError, walerrors.WalArchiveError)
