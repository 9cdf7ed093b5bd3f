// Messages of the Audit page (merged into i18n.js's under the key "audit").
export default {
  'zh-CN': {
    audit: {
      title: '审计日志', time: '时间', actor: '操作者', action: '动作', target: '对象', client: '客户端地址',
      node: '节点', since: '开始时间', until: '结束时间', before: '修改前', after: '修改后',
      actionPlaceholder: '例如 registry.update，或前缀 registry.', actorPlaceholder: '例如 admin 或 cli:root',
      targetPlaceholder: '例如 registries/3', none: '（无）',
      note: '通过管理 API 或命令行所做的每一次修改；密码等机密显示为 ****。保留天数同访问日志（[log] retention_days）。',
    },
  },
  en: {
    audit: {
      title: 'Audit trail', time: 'Time', actor: 'Actor', action: 'Action', target: 'Target', client: 'Client address',
      node: 'Node', since: 'From', until: 'To', before: 'Before', after: 'After',
      actionPlaceholder: 'e.g. registry.update, or the prefix registry.', actorPlaceholder: 'e.g. admin or cli:root',
      targetPlaceholder: 'e.g. registries/3', none: '(none)',
      note: 'Every change made through the admin API or the CLI; secrets show as ****. Kept as long as the access log ([log] retention_days).',
    },
  },
}
