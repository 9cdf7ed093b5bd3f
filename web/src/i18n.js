// A small reactive i18n: zh-CN by default, English on request, remembered in localStorage.
import { computed, ref } from 'vue'
import zhCn from 'element-plus/es/locale/lang/zh-cn'
import en from 'element-plus/es/locale/lang/en'
// one file of messages per page that has many (each exports {'zh-CN': {...}, en: {...}})
import cacheMessages from './locales/cache'
import retentionMessages from './locales/retention'
import syncMessages from './locales/sync'
import auditMessages from './locales/audit'

const STORAGE_KEY = 'zmirror.lang'
export const LANGS = ['zh-CN', 'en']

const messages = {
  'zh-CN': {
    app: { title: 'ZMirror', subtitle: '镜像仓库代理管理' },
    lang: { switchTo: 'English', current: '中文' },
    common: {
      add: '新增', edit: '编辑', delete: '删除', save: '保存', cancel: '取消', confirm: '确定',
      refresh: '刷新', search: '查询', reset: '重置', actions: '操作', enabled: '启用',
      disabled: '停用', yes: '是', no: '否', created: '创建时间', updated: '更新时间',
      loading: '加载中…', noData: '暂无数据', copy: '复制', copied: '已复制',
      copyFailed: '复制失败，请手动选择复制', saved: '已保存', deleted: '已删除',
      deleteTitle: '确认删除', warning: '提示', never: '从未', total: '共 {n} 条',
      fixErrors: '请修正标出的字段',
    },
    menu: {
      dashboard: '仪表盘', registries: '上游仓库', whitelists: '白名单', users: '用户',
      logs: '访问日志', nodes: '节点', help: '使用说明', logout: '退出登录', menu: '菜单',
      cache: '缓存', sync: '预热同步', audit: '审计日志',
    },
    login: {
      title: '管理员登录', username: '用户名', password: '密码', submit: '登录',
      usernameRequired: '请输入用户名', passwordRequired: '请输入密码',
      wrong: '用户名或密码错误', locked: '登录失败次数过多，请在 {s} 秒后重试',
      lockedShort: '请等待 {s} 秒', expired: '登录已失效，请重新登录',
      loggedOut: '已退出登录', hint: '使用 config.toml 中 [admin] 的账号登录',
      notAdmin: '该账号不是管理员', failed: '登录失败：{msg}',
    },
    header: {
      version: '版本',
    },
    password: {
      menu: '修改密码', title: '修改管理员密码', forcedTitle: '设置新的管理员密码',
      forcedHint: '您正在使用默认密码 admin123，任何能访问本服务的人都可能登录。请先设置新密码，之后才能使用管理功能。',
      current: '当前密码', new: '新密码', confirm: '确认新密码', submit: '保存新密码',
      currentRequired: '请输入当前密码', newRequired: '请输入新密码', confirmRequired: '请再次输入新密码',
      tooShort: '至少 {n} 个字符', tooLong: '最多 {n} 个字符', notDefault: '不能使用默认密码',
      mismatch: '两次输入的密码不一致', changed: '管理员密码已修改',
      help: '新密码以哈希形式写入 config.toml 的 [admin] password，立即生效；旧密码随即失效。',
    },
    dashboard: {
      requests: '请求数', bytes: '流量', errors: '错误数', errorRate: '错误率', users: '用户',
      registries: '上游仓库', whitelists: '白名单', hourly: '最近 24 小时', daily: '最近 7 天',
      topRepositories: '热门仓库', topUsers: '活跃用户', repository: '仓库', username: '用户',
      upstreamHealth: '上游健康状态', upstreamTraffic: '上游流量', upstream: '上游',
      cache: '缓存', anonymous: '（匿名）', latency: '延迟', lastError: '最近错误',
      lastChecked: '最近检查', failures: '连续失败',
      cacheSize: '已用空间', cacheMax: '上限 {max}，已用 {p}', cacheHits: '命中 {hits} 次，未命中 {misses} 次',
      cacheSaved: '节省上游流量 {p}', cacheDisabled: '缓存未启用（[cache] enabled = false）',
      cacheNote: '计数从服务启动时开始；命中率包括数据层和清单。',
      cacheNodeNote: '以上为本节点（{node}）的缓存：每个节点有自己的缓存，计数从该节点启动时开始。',
      cacheNotStoring: '缓存目前不写入新数据（写入磁盘失败：{error}），未命中的请求直接从上游转发。',
    },
    state: { up: '正常', down: '故障', cooldown: '冷却中', ratelimited: '限流中', unknown: '未知' },
    cache: {
      bytes: '已用空间', max_bytes: '容量上限', blobs: '缓存的数据层', hits: '命中', misses: '未命中',
      bytes_from_cache: '从缓存发送', bytes_from_upstream: '从上游下载', evictions: '淘汰次数',
      verify_failures: '校验失败', write_failures: '写入失败（磁盘）', hitRate: '命中率', downloads: '进行中的下载', stale_served: '过期仍使用',
      revalidated: '重新验证',
    },
    registries: {
      title: '上游仓库', add: '新增上游', editTitle: '编辑上游', addTitle: '新增上游',
      name: '名称', url: '地址', priority: '优先级', username: '用户名', password: '密码',
      hasPassword: '已设置密码', health: '健康状态', test: '测试连接',
      testOk: '连接成功：HTTP {status}，{latency}，认证方式 {auth}',
      testFail: '连接失败：{error}', passwordKeep: '留空则保持不变', clearPassword: '清除已保存的密码',
      deleteConfirm: '确定删除上游仓库“{name}”吗？', nameRequired: '请输入名称',
      urlRequired: '请输入地址', urlInvalid: '地址须为 http:// 或 https:// 开头，且不含用户信息、查询或片段',
      priorityInvalid: '优先级须为整数', priorityHelp: '数字越小越优先',
      credentials: '认证（可选）', credentialsCol: '认证', none: '无', tested: '测试',
      namespace: '命名空间', namespaceHelp: '该上游镜像的仓库主机，如 docker.io、ghcr.io、quay.io；同一命名空间的多个上游按优先级故障转移',
      namespaceRequired: '请输入命名空间', namespaceInvalid: '须为仓库主机名（可带 :端口），含“.”或端口，如 ghcr.io、registry:5000',
      preset: '常用仓库', presetPlaceholder: '选择后自动填写命名空间、名称和地址（可选）',
      presetAuth: {
        dockerhub: '匿名可拉取公开镜像（有拉取次数限制）；填写 Docker Hub 用户名和访问令牌（Access Token）作为密码可提高限额。',
        ghcr: '公开镜像无需认证；私有镜像填写 GitHub 用户名和具有 read:packages 权限的个人访问令牌（PAT）作为密码。',
        quay: '公开镜像无需认证；私有镜像填写 Quay 用户名或机器人账号（robot account）及其令牌。',
        gcr: '公开镜像无需认证；私有镜像用户名填写 _json_key，密码填写服务账号的 JSON 密钥。',
        nvcr: '需要认证：用户名固定为 $oauthtoken，密码填写 NGC 的 API Key。',
        none: '该仓库的公开镜像无需认证。',
      },
      rateLimit: '拉取限额', rateWindow: '每 {w}', limitedUntil: '限流至 {time}',
      rateLimitedHelp: '上游报告已达拉取限额（429 或剩余 0）：在此之前拉取请求转到同一命名空间的下一个上游，缓存的标签清单继续使用。',
      upstreamCount: '{n} 个上游', noEnabled: '无启用的上游', addHere: '新增上游',
      noEnabledHelp: '该命名空间没有启用的上游，拉取会返回 404 NAME_UNKNOWN',
      conn: {
        section: '连接', sectionHelp: '代理、TLS 证书',
        proxy: '代理', proxyDefault: '默认', proxyDirect: '直连', proxyCustom: '自定义',
        proxyDefaultHelp: '使用 config.toml 中 [upstream] proxy / no_proxy，未配置时使用环境变量 HTTPS_PROXY、HTTP_PROXY、ALL_PROXY、NO_PROXY',
        proxyDirectHelp: '不经代理，直接连接该上游（忽略默认代理和环境变量）',
        proxyCustomHelp: 'http://[用户:密码@]主机:端口、socks5://… 或 socks5h://…（由代理解析域名）；已保存的密码显示为 ****，不修改则保持不变',
        proxyRequired: '请输入代理地址', proxyInvalid: '须以 http://、socks5:// 或 socks5h:// 开头，形如 http://proxy.corp:3128',
        tlsVerify: '校验证书', tlsVerifyOff: '不校验上游的 TLS 证书：任何能拦截连接的人都可以冒充该上游并提供篡改的镜像。仅在测试环境或确认网络可信时关闭；私有 CA 请填写下面的“CA 证书”。',
        ca: 'CA 证书', caHelp: 'PEM 格式（-----BEGIN CERTIFICATE-----），可粘贴多个；与系统信任的 CA 一起使用',
        clientCert: '客户端证书', clientCertHelp: '双向 TLS（mTLS）：PEM 格式的客户端证书（可含中间证书）',
        clientKey: '客户端私钥', clientKeyHelp: 'PEM 格式的私钥；保存后不会再显示',
        clientKeySet: '已设置 — 留空则保持不变', clientKeyTag: '已保存私钥', clearClientKey: '清除已保存的私钥',
        serverName: 'TLS 服务器名', serverNameHelp: '可选：TLS 握手（SNI）和证书校验使用的主机名，留空则使用地址中的主机名',
        test: '测试连接', testHelp: '用当前表单（尚未保存）测试', tlsOff: '未校验证书', tlsOffHelp: '该上游关闭了 TLS 证书校验',
        proxyTag: '代理', directTag: '直连', proxyTagHelp: '经代理 {proxy}', directTagHelp: '直连，不使用默认代理',
      },
      steps: {
        title: '连接步骤', dns: 'DNS 解析', tcp: 'TCP 连接', proxy: '代理', tls: 'TLS 握手', v2: '/v2/ 接口',
        ok: '成功', failed: '失败', firstFailed: '在此步失败', none: '没有分步结果', details: '点击查看各步骤',
      },
    },
    whitelists: {
      title: '白名单', add: '新增规则', addTitle: '新增白名单规则', editTitle: '编辑白名单规则',
      prefix: '仓库前缀', note: '备注', prefixRequired: '请输入仓库前缀',
      prefixHelp: '规范名称：Docker Hub 的仓库不带主机名，如 library/nginx、library 或 myorg/app*（* 只能在末尾），nginx 等同于 library/nginx；其他仓库带主机名，如 ghcr.io/owner（ghcr.io 上 owner 的仓库）或 ghcr.io（整个 ghcr.io）',
      namespace: '命名空间', unknownNamespace: '没有配置 {ns} 的上游仓库',
      deleteConfirm: '确定删除白名单规则“{prefix}”吗？', tester: '匹配测试',
      testerPlaceholder: '输入仓库名，例如 nginx、bitnami/redis 或 ghcr.io/owner/img', check: '检查',
      allowed: '允许拉取', denied: '拒绝拉取', matched: '匹配规则', normalized: '规范化名称',
      mode: '匿名模式', modes: { whitelist: '白名单', all: '全部允许', none: '全部拒绝' },
      noMatch: '无匹配规则',
    },
    users: {
      title: '用户', add: '新增用户', addTitle: '新增用户', username: '用户名', password: '密码',
      newPassword: '新密码', changePassword: '修改密码', lastLogin: '最近登录',
      usernameRequired: '请输入用户名', passwordRequired: '请输入密码',
      deleteConfirm: '确定删除用户“{name}”吗？',
      passwordChanged: '密码已修改', changeTitle: '修改“{name}”的密码',
      hint: '这些是用于 docker login 的镜像仓库用户，不是管理员账号。',
      passwordRule: '至少 {min} 个字符，最多 {max} 个，不含控制字符（与管理员密码规则相同）',
      scopes: '可拉取范围', scopesAll: '全部', editScopes: '修改范围',
      scopesTitle: '“{name}”可拉取的仓库', scopesSaved: '可拉取范围已保存',
      scopesPlaceholder: '每行一个，例如\ndocker.io/library/*\nghcr.io/myorg/**',
      scopesHelp: '每行一个仓库模式，留空表示不限。* 匹配一个路径段内的字符，** 匹配一段或多段（ghcr.io/myorg/** 是 myorg 下的全部仓库）；不写主机名的是 Docker Hub（nginx 即 library/nginx）。匿名可拉取的仓库不受此限制。最多 {max} 条。',
      locked: {
        title: '已锁定的账号和地址', hint: '登录失败次数过多的账号或地址会被暂时锁定；解除锁定在 2 秒内对所有节点生效。',
        name: '账号 / 地址', kind: '类型', failures: '失败次数', until: '锁定至', unlock: '解除锁定',
        address: '客户端地址', registryLogin: '账号（docker login）', adminLogin: '账号（管理后台）',
        unnamed: '未记录名称', unlocked: '已解除“{name}”的锁定',
      },
    },
    logs: {
      title: '访问日志', time: '时间', timeRange: '时间范围', start: '开始时间', end: '结束时间',
      clientIp: '客户端 IP', username: '用户', method: '方法', repository: '仓库',
      reference: '标签/摘要', kind: '类型', status: '状态码', bytes: '字节数', duration: '耗时',
      upstream: '上游', cacheHit: '缓存命中', userAgent: 'User-Agent', namespace: '命名空间',
      node: '节点',
      statusPlaceholder: '如 404 或 4xx', autoRefresh: '自动刷新', clear: '清空日志',
      clearAll: '清空全部', clearOlder: '清除 {d} 天前的日志',
      clearConfirm: '确定清空全部访问日志吗？此操作不可恢复。',
      clearOlderConfirm: '确定删除 {d} 天前的访问日志吗？此操作不可恢复。',
      cleared: '已删除 {n} 条日志', all: '全部',
      kinds: { manifest: '清单', blob: '数据层', tags: '标签列表', token: '令牌', denied: '拒绝', other: '其他' },
      anonymous: '（匿名）', filters: '筛选',
      client: '用户@客户端',
    },
    nodes: {
      node: '节点', state: '状态', version: '版本', address: '地址', started: '启动时间', lastSeen: '最近心跳',
      stoppedAt: '停止于', bus: '总线', cache: '缓存', self: '当前节点', conflict: '名称重复',
      conflictHelp: '有两个进程使用同一个节点名“{node}”：节点名必须唯一（访问日志的节点列依赖它），请修改其中一个的 [server] node 并重启',
      states: { up: '在线', stale: '失联', stopped: '已停止' },
      busStates: { connected: '已连接', disconnected: '已断开', local: '单节点' },
      summary: '共 {n} 个节点：{up} 个在线，{stale} 个失联，{stopped} 个已停止',
      hint: '共用同一数据库的节点：每个节点每 {s} 秒上报一次心跳，超过 {stale} 秒未上报显示为失联；7 天未上报的节点自动删除。',
      ago: '{t}前', noCache: '无缓存', blobs: '{n} 个数据层', truncated: '只显示前 {n} 个节点（共 {total} 个）',
    },
    help: {
      title: '使用说明',
      intro: '以下示例使用当前服务器地址 {host}。复制后即可使用。',
      insecure: '当前通过 HTTP（非 HTTPS）访问：Docker 等客户端需要将该地址配置为不安全仓库（insecure registry），或在前面部署 HTTPS 反向代理。',
      login: '登录（需要用户时）', loginDesc: '使用在“用户”页面创建的账号登录：',
      pull: '直接拉取镜像', pullDesc: '在镜像名前加上本服务器地址：',
      docker: 'Docker 镜像加速（daemon.json）',
      dockerDesc: '编辑 /etc/docker/daemon.json 后执行 systemctl restart docker，之后 docker pull nginx 会经由本代理：',
      containerd: 'containerd（hosts.toml）',
      containerdDesc: '创建 /etc/containerd/certs.d/{ns}/hosts.toml（containerd 配置中需设置 config_path = "/etc/containerd/certs.d"）。containerd 请求本服务时会带上 ?ns={ns}，由此选中该命名空间：',
      podman: 'Podman / CRI-O（registries.conf）',
      podmanDesc: '在 /etc/containers/registries.conf 中加入：',
      namespaces: '按仓库配置（命名空间）',
      namespacesDesc: '本服务按命名空间代理多个仓库，下面是每个已配置命名空间的配置。选择命名空间有三种方式：路径前缀（{host}/ghcr.io/…）、containerd 的 ?ns= 参数，以及 config.toml 中 [routing] hosts 配置的主机名。',
      pullNsDesc: '在镜像名前加上本服务器地址，保留 {ns}：',
      dockerNsDesc: 'Docker 的 registry-mirrors 只作用于 Docker Hub：{ns} 的镜像请使用上面带前缀的名称（{host}/{ns}/…）。',
      k3s: 'k3s（registries.yaml）',
      k3sDesc: '写入 /etc/rancher/k3s/registries.yaml 后重启 k3s（多个仓库时合并到同一个 mirrors 下）：',
      kind: 'kind（containerdConfigPatches）',
      kindDesc: '让 kind 节点使用上面的 hosts.toml（把 certs.d 目录挂载进节点）。注意：节点内的 127.0.0.1 / localhost 指节点自身，请使用节点可访问的地址。{ns} 的 hosts.toml 放在 /etc/containerd/certs.d/{ns}/：',
      verify: '验证', verifyDesc: '检查服务是否可用：',
    },
    errors: {
      network: '无法连接服务器：{msg}', http: '请求失败（HTTP {status}）',
      forbidden: '没有权限（需要管理员账号）', notFound: '未找到', conflict: '已存在',
    },
  },
  en: {
    app: { title: 'ZMirror', subtitle: 'Registry proxy admin' },
    lang: { switchTo: '中文', current: 'English' },
    common: {
      add: 'Add', edit: 'Edit', delete: 'Delete', save: 'Save', cancel: 'Cancel', confirm: 'OK',
      refresh: 'Refresh', search: 'Search', reset: 'Reset', actions: 'Actions', enabled: 'Enabled',
      disabled: 'Disabled', yes: 'Yes', no: 'No', created: 'Created', updated: 'Updated',
      loading: 'Loading…', noData: 'No data', copy: 'Copy', copied: 'Copied',
      copyFailed: 'Copy failed, please select and copy manually', saved: 'Saved', deleted: 'Deleted',
      deleteTitle: 'Confirm deletion', warning: 'Warning', never: 'Never', total: '{n} total',
      fixErrors: 'Please fix the marked fields',
    },
    menu: {
      dashboard: 'Dashboard', registries: 'Registries', whitelists: 'Whitelists', users: 'Users',
      logs: 'Access logs', nodes: 'Nodes', help: 'How to use', logout: 'Log out', menu: 'Menu',
      cache: 'Cache', sync: 'Pre-warm & sync', audit: 'Audit trail',
    },
    login: {
      title: 'Admin login', username: 'Username', password: 'Password', submit: 'Log in',
      usernameRequired: 'Enter the username', passwordRequired: 'Enter the password',
      wrong: 'Wrong username or password', locked: 'Too many failed logins. Try again in {s} seconds.',
      lockedShort: 'Wait {s} s', expired: 'Your session has ended, please log in again',
      loggedOut: 'Logged out', hint: 'Use the [admin] account from config.toml',
      notAdmin: 'This account is not the admin', failed: 'Login failed: {msg}',
    },
    header: {
      version: 'Version',
    },
    password: {
      menu: 'Change password', title: 'Change the admin password', forcedTitle: 'Set a new admin password',
      forcedHint: 'You are using the default password admin123, which anyone who reaches this server could use. Set a new password before using the admin functions.',
      current: 'Current password', new: 'New password', confirm: 'Repeat the new password', submit: 'Save the new password',
      currentRequired: 'Enter the current password', newRequired: 'Enter a new password', confirmRequired: 'Repeat the new password',
      tooShort: 'At least {n} characters', tooLong: 'At most {n} characters', notDefault: 'Must not be the default password',
      mismatch: 'The passwords do not match', changed: 'Admin password changed',
      help: 'The new password is stored as a hash in [admin] password of config.toml and applies at once; the old one stops working.',
    },
    dashboard: {
      requests: 'Requests', bytes: 'Traffic', errors: 'Errors', errorRate: 'Error rate', users: 'Users',
      registries: 'Registries', whitelists: 'Whitelists', hourly: 'Last 24 hours', daily: 'Last 7 days',
      topRepositories: 'Top repositories', topUsers: 'Top users', repository: 'Repository',
      username: 'User', upstreamHealth: 'Upstream health', upstreamTraffic: 'Upstream traffic',
      upstream: 'Upstream', cache: 'Cache', anonymous: '(anonymous)', latency: 'Latency',
      lastError: 'Last error', lastChecked: 'Last checked', failures: 'Failures in a row',
      cacheSize: 'Size', cacheMax: 'of {max}, {p} full', cacheHits: 'hits {hits}, misses {misses}',
      cacheSaved: '{p} of the upstream traffic saved', cacheDisabled: 'The cache is disabled ([cache] enabled = false)',
      cacheNote: 'Counted since the server started; the hit rate counts blobs and manifests.',
      cacheNodeNote: "This node's cache ({node}): every node has its own, counted since that node started.",
      cacheNotStoring: 'The cache stores nothing new for now (a disk write failed: {error}); misses are relayed from upstream.',
    },
    state: { up: 'Up', down: 'Down', cooldown: 'Cooling down', ratelimited: 'Rate limited', unknown: 'Unknown' },
    cache: {
      bytes: 'Used', max_bytes: 'Capacity', blobs: 'Cached blobs', hits: 'Hits', misses: 'Misses',
      bytes_from_cache: 'Sent from cache', bytes_from_upstream: 'Fetched upstream', evictions: 'Evictions',
      verify_failures: 'Verify failures', write_failures: 'Write failures (disk)', hitRate: 'Hit rate', downloads: 'Downloads in progress',
      stale_served: 'Stale served', revalidated: 'Revalidated',
    },
    registries: {
      title: 'Upstream registries', add: 'Add registry', editTitle: 'Edit registry',
      addTitle: 'Add registry', name: 'Name', url: 'URL', priority: 'Priority', username: 'Username',
      password: 'Password', hasPassword: 'Password set', health: 'Health', test: 'Test connection',
      testOk: 'Reachable: HTTP {status}, {latency}, auth {auth}', testFail: 'Connection failed: {error}',
      passwordKeep: 'Leave empty to keep the current one', clearPassword: 'Clear the stored password',
      deleteConfirm: 'Delete the registry "{name}"?', nameRequired: 'Enter a name',
      urlRequired: 'Enter the URL',
      urlInvalid: 'Must start with http:// or https:// and have no user info, query or fragment',
      priorityInvalid: 'Priority must be an integer', priorityHelp: 'Lower numbers are tried first',
      credentials: 'Credentials (optional)', credentialsCol: 'Credentials', none: 'none', tested: 'Test',
      namespace: 'Namespace', namespaceHelp: 'The registry host this upstream mirrors, e.g. docker.io, ghcr.io, quay.io; upstreams of one namespace fail over by priority',
      namespaceRequired: 'Enter the namespace', namespaceInvalid: "Must be a registry host name (optionally :port) with a '.' or a port, e.g. ghcr.io, registry:5000",
      preset: 'Preset', presetPlaceholder: 'Fills namespace, name and URL (optional)',
      presetAuth: {
        dockerhub: 'Public images can be pulled anonymously (with a pull limit); a Docker Hub username and an access token as password raise the limit.',
        ghcr: 'Public images need no login; for private ones use a GitHub username and a personal access token (PAT) with read:packages as password.',
        quay: 'Public images need no login; for private ones use a Quay user or robot account and its token.',
        gcr: 'Public images need no login; for private ones the username is _json_key and the password a service account JSON key.',
        nvcr: 'Needs a login: the username is literally $oauthtoken, the password an NGC API key.',
        none: 'Public images of this registry need no login.',
      },
      rateLimit: 'Pull limit', rateWindow: 'per {w}', limitedUntil: 'limited until {time}',
      rateLimitedHelp: 'The upstream said its pull limit is used up (429 or 0 left): until then pulls go to the next upstream of the namespace and cached tag manifests are served.',
      upstreamCount: '{n} upstream(s)', noEnabled: 'no enabled upstream', addHere: 'Add upstream',
      noEnabledHelp: 'No upstream of this namespace is enabled: pulls answer 404 NAME_UNKNOWN',
      conn: {
        section: 'Connection', sectionHelp: 'proxy, TLS certificates',
        proxy: 'Proxy', proxyDefault: 'Default', proxyDirect: 'Direct', proxyCustom: 'Custom',
        proxyDefaultHelp: '[upstream] proxy / no_proxy from config.toml; when not set there, the environment\'s HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY',
        proxyDirectHelp: 'Connect to this upstream directly (no default proxy, environment ignored)',
        proxyCustomHelp: 'http://[user:password@]host:port, socks5://… or socks5h://… (the proxy resolves names); a saved password shows as **** and is kept unless you change it',
        proxyRequired: 'Enter the proxy URL', proxyInvalid: 'Must start with http://, socks5:// or socks5h://, e.g. http://proxy.corp:3128',
        tlsVerify: 'Verify certificate', tlsVerifyOff: 'The upstream\'s TLS certificate is not verified: anyone who can intercept the connection can pose as this upstream and serve tampered images. Turn it off only for tests or on a network you trust; for a private CA fill in "CA bundle" below.',
        ca: 'CA bundle', caHelp: 'PEM (-----BEGIN CERTIFICATE-----), several may be pasted; trusted besides the system\'s CAs',
        clientCert: 'Client certificate', clientCertHelp: 'Mutual TLS (mTLS): the client certificate in PEM (intermediates may follow)',
        clientKey: 'Client key', clientKeyHelp: 'The private key in PEM; it is never shown again once saved',
        clientKeySet: 'set — leave empty to keep', clientKeyTag: 'key saved', clearClientKey: 'Clear the saved key',
        serverName: 'Server name', serverNameHelp: 'Optional: the host name for the TLS handshake (SNI) and the certificate check; empty: the URL\'s host',
        test: 'Test connection', testHelp: 'Tests the form as it is (not saved yet)', tlsOff: 'TLS verify off', tlsOffHelp: 'TLS certificate verification is off for this upstream',
        proxyTag: 'proxy', directTag: 'direct', proxyTagHelp: 'Through the proxy {proxy}', directTagHelp: 'Direct, the default proxy is not used',
      },
      steps: {
        title: 'Connection steps', dns: 'DNS lookup', tcp: 'TCP connect', proxy: 'Proxy', tls: 'TLS handshake', v2: '/v2/ endpoint',
        ok: 'ok', failed: 'failed', firstFailed: 'failed here', none: 'No step details', details: 'Click for the steps',
      },
    },
    whitelists: {
      title: 'Whitelists', add: 'Add rule', addTitle: 'Add whitelist rule', editTitle: 'Edit whitelist rule',
      prefix: 'Repository prefix', note: 'Note', prefixRequired: 'Enter a repository prefix',
      prefixHelp: 'A canonical name: Docker Hub repositories without a host, e.g. library/nginx, library or myorg/app* (* only at the end), nginx means library/nginx; other registries with their host, e.g. ghcr.io/owner (owner\'s repositories on ghcr.io) or ghcr.io (all of ghcr.io)',
      namespace: 'Namespace', unknownNamespace: 'No upstream registry of {ns} is configured',
      deleteConfirm: 'Delete the whitelist rule "{prefix}"?', tester: 'Match tester',
      testerPlaceholder: 'Repository, e.g. nginx, bitnami/redis or ghcr.io/owner/img', check: 'Check',
      allowed: 'Allowed', denied: 'Denied', matched: 'Matched rule', normalized: 'Normalized name',
      mode: 'Anonymous mode', modes: { whitelist: 'whitelist', all: 'allow all', none: 'deny all' },
      noMatch: 'No rule matches',
    },
    users: {
      title: 'Users', add: 'Add user', addTitle: 'Add user', username: 'Username', password: 'Password',
      newPassword: 'New password', changePassword: 'Change password', lastLogin: 'Last login',
      usernameRequired: 'Enter a username', passwordRequired: 'Enter a password',
      deleteConfirm: 'Delete the user "{name}"?',
      passwordChanged: 'Password changed', changeTitle: 'Change the password of "{name}"',
      hint: 'Registry users for docker login — not the admin account.',
      passwordRule: 'At least {min} and at most {max} characters, no control characters (the same rule as the admin password)',
      scopes: 'May pull', scopesAll: 'All', editScopes: 'Edit scopes',
      scopesTitle: 'What "{name}" may pull', scopesSaved: 'Scopes saved',
      scopesPlaceholder: 'One per line, e.g.\ndocker.io/library/*\nghcr.io/myorg/**',
      scopesHelp: 'One repository pattern per line; empty means everything. * matches within one path component, ** one or more components (ghcr.io/myorg/** is every repository under myorg); without a host it is Docker Hub (nginx is library/nginx). What anonymous users may pull stays pullable. At most {max} patterns.',
      locked: {
        title: 'Locked accounts and addresses', hint: 'Accounts and addresses with too many failed logins are locked for a while; an unlock applies on every node within 2 s.',
        name: 'Account / address', kind: 'Kind', failures: 'Failures', until: 'Locked until', unlock: 'Unlock',
        address: 'Client address', registryLogin: 'Account (docker login)', adminLogin: 'Account (admin UI)',
        unnamed: 'name not recorded', unlocked: '"{name}" unlocked',
      },
    },
    logs: {
      title: 'Access logs', time: 'Time', timeRange: 'Time range', start: 'Start', end: 'End',
      clientIp: 'Client IP', username: 'User', method: 'Method', repository: 'Repository',
      reference: 'Tag / digest', kind: 'Kind', status: 'Status', bytes: 'Bytes', duration: 'Duration',
      upstream: 'Upstream', cacheHit: 'Cache hit', userAgent: 'User agent', namespace: 'Namespace',
      node: 'Node',
      statusPlaceholder: 'e.g. 404 or 4xx', autoRefresh: 'Auto refresh', clear: 'Clear logs',
      clearAll: 'Clear all', clearOlder: 'Older than {d} days',
      clearConfirm: 'Delete all access logs? This cannot be undone.',
      clearOlderConfirm: 'Delete access logs older than {d} days? This cannot be undone.',
      cleared: '{n} rows deleted', all: 'All',
      kinds: { manifest: 'manifest', blob: 'blob', tags: 'tags', token: 'token', denied: 'denied', other: 'other' },
      anonymous: '(anonymous)', filters: 'Filters',
      client: 'User@client',
    },
    nodes: {
      node: 'Node', state: 'State', version: 'Version', address: 'Address', started: 'Started', lastSeen: 'Last seen',
      stoppedAt: 'Stopped at', bus: 'Bus', cache: 'Cache', self: 'this node', conflict: 'duplicate name',
      conflictHelp: 'Two processes use the node name "{node}": node names must be unique (the access log\'s node column depends on it); change [server] node of one of them and restart it',
      states: { up: 'Up', stale: 'Stale', stopped: 'Stopped' },
      busStates: { connected: 'connected', disconnected: 'disconnected', local: 'single node' },
      summary: '{n} node(s): {up} up, {stale} stale, {stopped} stopped',
      hint: 'The nodes sharing this database: each one reports a heartbeat every {s} s and shows as stale after {stale} s without one; nodes silent for 7 days are removed.',
      ago: '{t} ago', noCache: 'no cache', blobs: '{n} blob(s)', truncated: 'Only the first {n} of {total} nodes are shown',
    },
    help: {
      title: 'How to use',
      intro: 'The examples below use this server\'s address, {host}. Copy and paste them.',
      insecure: 'You are using plain HTTP: Docker and other clients must list this address as an insecure registry, or put an HTTPS reverse proxy in front.',
      login: 'Log in (when users are required)', loginDesc: 'Use an account created on the Users page:',
      pull: 'Pull directly', pullDesc: 'Prefix the image name with this server\'s address:',
      docker: 'Docker mirror (daemon.json)',
      dockerDesc: 'Edit /etc/docker/daemon.json and run systemctl restart docker; docker pull nginx then goes through this proxy:',
      containerd: 'containerd (hosts.toml)',
      containerdDesc: 'Create /etc/containerd/certs.d/{ns}/hosts.toml (containerd needs config_path = "/etc/containerd/certs.d"). containerd adds ?ns={ns} to its requests to this server, which selects the namespace:',
      podman: 'Podman / CRI-O (registries.conf)',
      podmanDesc: 'Add to /etc/containers/registries.conf:',
      namespaces: 'Per registry (namespace)',
      namespacesDesc: 'This server proxies several registries, one namespace each; below is the setup for every configured namespace. A client selects the namespace by path prefix ({host}/ghcr.io/…), by containerd\'s ?ns= parameter, or by a host name from [routing] hosts in config.toml.',
      pullNsDesc: 'Prefix the image name, {ns} included, with this server\'s address:',
      dockerNsDesc: 'Docker\'s registry-mirrors applies to Docker Hub only: pull {ns} images by the prefixed name above ({host}/{ns}/…).',
      k3s: 'k3s (registries.yaml)',
      k3sDesc: 'Write /etc/rancher/k3s/registries.yaml and restart k3s (several registries go under one mirrors key):',
      kind: 'kind (containerdConfigPatches)',
      kindDesc: 'Let the kind nodes use the hosts.toml above (the certs.d directory mounted into them). Inside a node 127.0.0.1 / localhost is the node itself: use an address the nodes can reach. The hosts.toml of {ns} goes in /etc/containerd/certs.d/{ns}/:',
      verify: 'Check', verifyDesc: 'Check that the service answers:',
    },
    errors: {
      network: 'Cannot reach the server: {msg}', http: 'Request failed (HTTP {status})',
      forbidden: 'Forbidden (admin account required)', notFound: 'Not found', conflict: 'Already exists',
    },
  },
}

function initialLang() {
  try {
    const saved = localStorage.getItem(STORAGE_KEY)
    if (LANGS.includes(saved)) return saved
  } catch (e) {
    /* storage disabled */
  }
  return 'zh-CN'
}

for (const extra of [cacheMessages, retentionMessages, syncMessages, auditMessages]) {
  for (const l of LANGS) Object.assign(messages[l], extra[l])
}

export const lang = ref(initialLang())

export const elementLocale = computed(() => (lang.value === 'en' ? en : zhCn))

export function setLang(value) {
  if (!LANGS.includes(value)) return
  lang.value = value
  try {
    localStorage.setItem(STORAGE_KEY, value)
  } catch (e) {
    /* storage disabled */
  }
  document.documentElement.lang = value
}

export function toggleLang() {
  setLang(lang.value === 'en' ? 'zh-CN' : 'en')
}

function lookup(dict, key) {
  return key.split('.').reduce((node, part) => (node == null ? undefined : node[part]), dict)
}

// t('a.b', {n: 1}) — reads lang.value, so templates re-render when the language changes.
export function t(key, params) {
  let text = lookup(messages[lang.value], key)
  if (text === undefined) text = lookup(messages['zh-CN'], key)
  if (typeof text !== 'string') return key
  if (params) {
    text = text.replace(/\{(\w+)\}/g, (m, name) => (params[name] === undefined ? m : String(params[name])))
  }
  return text
}

document.documentElement.lang = lang.value
