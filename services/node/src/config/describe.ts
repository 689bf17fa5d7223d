/**
 * `meshcast node --help` and docs/configuration.md, both generated from the schema so that
 * neither can name a setting, flag, environment variable or default the node does not have.
 */
import { CONFIG_FILE_ENV, GROUPS, SETTINGS, type Setting } from './schema.ts';

function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(/\s+/)) {
    if (line !== '' && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else {
      line = line === '' ? word : `${line} ${word}`;
    }
  }
  if (line !== '') lines.push(line);
  return lines;
}

/** Markdown `code` spans read fine as plain text except for the backticks themselves. */
const plain = (text: string): string => text.replace(/`/g, '');

export function helpText(): string {
  const col = 24;
  const out: string[] = ['usage: meshcast node [options]', '', 'Options (a flag wins over its environment variable, which wins over the file):', ''];
  const entry = (left: string, lines: string[]): void => {
    const [first = '', ...rest] = lines;
    out.push(`  ${left.padEnd(col - 2)}${left.length > col - 3 ? `\n${' '.repeat(col)}` : ''}${first}`);
    for (const l of rest) out.push(`${' '.repeat(col)}${l}`);
  };
  entry('--config FILE', ['YAML config file; see docs/configuration.md', `env ${CONFIG_FILE_ENV}`]);
  for (const s of SETTINGS) {
    if (!s.flag) continue;
    const value = s.type === 'number' || s.type.startsWith('integer') ? 'N' : s.type.startsWith('list') ? 'LIST' : 'VALUE';
    // The short (older) environment names first: they are what most deployments already use.
    const names = [...s.env.slice(1), s.env[0]!];
    const where = [...wrap(`env ${names.join(' or ')}`, 78 - col), ...(s.secret ? [] : [`default ${s.defaultShown}`])];
    entry(`--${s.flag} ${value}`, [...wrap(plain(s.description), 78 - col), ...where]);
  }
  entry('-h, --help', ['this help']);
  out.push(
    '',
    ...wrap(
      'Every other setting (limits, media, HLS, apps, auth, webhooks, NATS credentials and TLS, the admin token) is set in the config file or by its environment variable, MESHCAST_ and the setting\'s path in capitals with dots as underscores (mesh.nats_replicas is MESHCAST_MESH_NATS_REPLICAS). All of them, with defaults, are listed in docs/configuration.md.',
      78,
    ),
    '',
  );
  return out.join('\n');
}

const cell = (text: string): string => text.replace(/\|/g, '\\|').replace(/\n/g, ' ');
const code = (text: string): string => `\`${text}\``;

function row(s: Setting, within: string): string {
  const name = within ? s.path.slice(within.length + 1) : s.path;
  const env = s.env.map(code).join('<br>');
  const def = s.secret && !s.defaultText ? '(none; secret)' : code(s.defaultShown);
  return `| ${code(name)} | ${cell(s.type)} | ${cell(def)} | ${env} | ${s.flag ? code(`--${s.flag}`) : ''} | ${cell(s.description)}${s.secret ? ' **Secret.**' : ''} |`;
}

/** docs/configuration.md, exactly as committed (`npm run docs:config` writes it). */
export function configurationMarkdown(): string {
  const parts: string[] = [
    '# Configuration',
    '',
    '<!-- Generated from services/node/src/config/schema.ts by `npm run docs:config`; do not edit by hand. -->',
    '',
    'Every setting of `meshcast node` is listed below. Each one can be given in a YAML file and as an',
    'environment variable; the common ones also as a command-line flag (`meshcast node --help`).',
    '',
    '## Where settings come from',
    '',
    'Later sources win, setting by setting:',
    '',
    '1. the defaults below;',
    `2. the YAML file named by \`--config FILE\` (or \`${CONFIG_FILE_ENV}\`);`,
    '3. environment variables, `MESHCAST_` and the setting\'s path in capitals with dots as underscores',
    '   (`mesh.nats_replicas` is `MESHCAST_MESH_NATS_REPLICAS`); some settings also keep a shorter',
    '   name (`MESHCAST_NATS`). An empty variable counts as unset;',
    '4. command-line flags.',
    '',
    'The file is one YAML mapping whose keys are the paths below, nested by their dots:',
    '',
    '```yaml',
    'node_id: edge-1',
    'public_host: edge-1.example.net',
    'roles: [playback]',
    'mesh:',
    '  nats: [nats://nats1:4222, nats://nats2:4222, nats://nats3:4222]',
    '  nats_replicas: 3',
    '  mesh_secret: change-me   # or MESHCAST_MESH_SECRET, kept out of the file',
    'apps:',
    '  live:',
    '    duplicate_publish: reject',
    '```',
    '',
    'An unknown key is an error naming it, so a typo cannot be silently ignored. In the environment',
    'and in flags, a list is comma-separated (`MESHCAST_NATS=nats://a:4222,nats://b:4222`) and a',
    'map- or list-valued setting is YAML or JSON text (`MESHCAST_APPS=\'{live: {duplicate_publish: reject}}\'`),',
    'merged into what the file gives. Secrets (marked below) are never shown in `--help` or logs; give them',
    'by environment variable or file rather than by flag.',
    '',
    '## Checked at start',
    '',
    'A setting that could only fail while the node runs stops it at start, with one line naming the',
    'setting and its environment variable and flag, and exit status 2. Among the rules: a mesh node',
    '(`mesh.nats` set) needs `mesh.mesh_secret`, and a `public_host` when `host` is a wildcard',
    '(`0.0.0.0`, `::`); an admin listener on a non-loopback `admin.host` needs `admin.token`;',
    '`mesh.heartbeat_ms` < `mesh.suspect_ms` < `mesh.dead_ms`; `mesh.renew_ms` < `mesh.lease_ms`;',
    'the RTMP, HTTP and admin ports differ on one address; NATS URLs are `nats://` or `tls://`; NATS',
    'credential and TLS files are readable; a playback node has `mesh.capacity` of at least 1. Several',
    'NATS servers with `mesh.nats_replicas: 1` start with a warning in the log.',
    '',
  ];
  const sections: Array<{ path: string; title: string; description: string }> = [
    { path: '', title: 'Node', description: 'Identity, listeners and what the node does.' },
    ...GROUPS.map((g) => ({ path: g.path, title: code(g.path), description: g.description })),
  ];
  for (const sec of sections) {
    const settings = SETTINGS.filter((s) => (sec.path === '' ? !s.path.includes('.') : s.path.startsWith(`${sec.path}.`) && !s.path.slice(sec.path.length + 1).includes('.')));
    if (settings.length === 0) continue;
    parts.push(`## ${sec.title}`, '', sec.description, '');
    parts.push('| Setting | Type | Default | Environment | Flag | Description |', '| --- | --- | --- | --- | --- | --- |');
    for (const s of settings) parts.push(row(s, sec.path));
    parts.push('');
  }
  return parts.join('\n');
}
