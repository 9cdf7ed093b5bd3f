import { createApp } from 'vue'
import { ElMessage } from 'element-plus'
import 'element-plus/es/components/message/style/css'
import 'element-plus/es/components/message-box/style/css'
import 'element-plus/es/components/notification/style/css'
import './styles.css'
import App from './App.vue'
import { router } from './router'
import { setUnauthorizedHandler } from './api'
import { t } from './i18n'

// Any 401 on an authenticated request: credentials were dropped, back to the login page.
setUnauthorizedHandler(() => {
  const current = router.currentRoute.value
  if (current.name !== 'login') {
    ElMessage({ type: 'warning', message: t('login.expired'), grouping: true })
    router.replace({ name: 'login', query: current.fullPath !== '/' ? { redirect: current.fullPath } : {} })
  }
})

createApp(App).use(router).mount('#app')
