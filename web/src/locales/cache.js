// Messages of the cache part of the UI (merged into i18n.js's under the key "cache").
export default {
  'zh-CN': { cache: {} },
  en: { cache: {} },
}
