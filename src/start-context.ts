// Where this process was started, so that a successor starts the same way: the logical working
// directory ($PWD when it names the directory the process runs in, as unicorn and puma do) and
// the script resolved against it. After `current -> releases/v2` is re-pointed, a successor
// started in `current` runs v2; one started in the physical directory would run v1 again.
import * as fs from 'node:fs';
import * as path from 'node:path';

/** The physical working directory and $PWD as they were when the package was loaded. */
const START = { physical: safeCwd(), pwd: process.env.PWD };

function safeCwd(): string {
  try {
    return process.cwd();
  } catch {
    return '/'; // the directory was removed under us: nothing better to start from
  }
}

/**
 * logicalDirectory returns `pwd` when it is an absolute path naming the same directory (same
 * device and inode) as `physical`, else `physical`. A shell's `cd current` sets $PWD to the path
 * through the symlink, while the kernel (and so process.cwd()) only knows the target.
 */
export function logicalDirectory(pwd: string | undefined, physical: string): string {
  if (pwd === undefined || !path.isAbsolute(pwd)) return physical;
  try {
    const logical = fs.statSync(pwd);
    const real = fs.statSync(physical);
    if (logical.dev === real.dev && logical.ino === real.ino) return path.normalize(pwd);
  } catch {
    // $PWD is gone or unreadable: it names nothing we can start from
  }
  return physical;
}

/**
 * relocateScript re-roots an absolute script path that lies under the physical directory onto the
 * logical one (Node resolves argv[1] against the physical cwd). Paths elsewhere stay as given:
 * they were typed absolute, or through `..`, and mean what they say.
 */
export function relocateScript(script: string, physical: string, logical: string): string {
  if (logical === physical || !path.isAbsolute(script)) return script;
  const relative = path.relative(physical, script);
  if (relative === '' || relative === '..' || relative.startsWith(`..${path.sep}`) || path.isAbsolute(relative)) return script;
  return path.join(logical, relative);
}

/** startDirectory: the logical directory this process was started in. */
export function startDirectory(): string {
  return logicalDirectory(START.pwd, START.physical);
}

/**
 * startCommand: how to start this very program again from where it was started: execPath,
 * execArgv, the script (re-rooted on the logical directory) and the rest of argv.
 */
export function startCommand(): { file: string; args: string[]; cwd: string } {
  const cwd = startDirectory();
  const argv = process.argv.slice(1);
  if (argv.length > 0) argv[0] = relocateScript(argv[0]!, START.physical, cwd);
  return { file: process.execPath, args: [...process.execArgv, ...argv], cwd };
}
