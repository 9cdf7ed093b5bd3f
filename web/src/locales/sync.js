// Messages of the sync part of the UI (merged into i18n.js's under the key "sync").
export default {
  'zh-CN': { sync: {} },
  en: { sync: {} },
}
